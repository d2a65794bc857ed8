"""Export a GA-DMS checkpoint's retrieval towers in open_clip's Hub layout (`gadms export-model`)."""
