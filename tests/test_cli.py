import importlib
import subprocess
import sys

import pytest
from pydantic import BaseModel, ConfigDict

from flows.cli import COMMANDS, build_parser, main
from storage.configfile import ConfigError, load_config


def test_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert f"\n  {name} " in out


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_module_builds_its_parser(name):
    module = importlib.import_module(COMMANDS[name][0])
    assert callable(module.add_arguments)
    parser = build_parser(name)
    assert parser.prog == f"gadms {name}"


def test_unknown_command_is_an_error(capsys):
    assert main(["frobnicate"]) == 2
    assert capsys.readouterr().err.startswith("gadms: error: unknown command 'frobnicate'")


def test_console_script_runs_without_importing_torch():
    code = "import sys; from flows.cli import main; main(['--help']); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith("False")


class _Job(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    size: int = 1


@pytest.mark.parametrize("content, message", [
    ("name: x\nsize: many\n", r"job.yaml: field 'size': Input should be a valid integer"),
    ("name: x\ncolour: red\n", r"job.yaml: field 'colour': Extra inputs are not permitted"),
    ("name: [unclosed\n", r"job.yaml: not valid YAML/JSON"),
    ("!!python/object/apply:os.system ['echo pwned']\n", r"job.yaml: not valid YAML/JSON"),
])
def test_config_errors_name_the_file_and_field(tmp_path, content, message):
    path = tmp_path / "job.yaml"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        load_config(path, _Job)


def test_config_file_missing_or_overridden(tmp_path):
    path = tmp_path / "job.yaml"
    with pytest.raises(ConfigError, match=r"missing.yaml: config file not found"):
        load_config(tmp_path / "missing.yaml", _Job)
    path.write_text("name: x\n")
    assert load_config(path, _Job, {"size": 3}) == _Job(name="x", size=3)


NOT_AN_INTEGER = "Input should be a valid integer, unable to parse string as an integer"


def test_a_bad_value_is_blamed_on_the_file_or_on_the_command_line_that_gave_it(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("name: x\nsize: big\n")
    with pytest.raises(ConfigError) as from_file:
        load_config(path, _Job, {"name": "y"})
    assert str(from_file.value) == f"{path}: field 'size': {NOT_AN_INTEGER}"
    path.write_text("name: x\n")
    with pytest.raises(ConfigError) as from_command_line:
        load_config(path, _Job, {"size": "big"})
    assert str(from_command_line.value) == f"command line: field 'size': {NOT_AN_INTEGER}"


def test_build_config_error_is_one_line(tmp_path, capsys):
    path = tmp_path / "build.yaml"
    path.write_text("output_root: out\ninputs: {}\n")
    assert main(["build", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(f"gadms build: error: {path}: field 'inputs': Value error, give at least one of url_lists")
