"""Versioned prompt files and the caption template bank: data, shipped inside the wheel as this package's files."""
