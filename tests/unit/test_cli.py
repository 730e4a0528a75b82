import subprocess
import sys
import types
from pathlib import Path

import pytest
from support import REPO_ROOT

from nnunet_tubeconv import __version__
from nnunet_tubeconv.cli import COMMANDS, main

ROOT = REPO_ROOT


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert __version__ in capsys.readouterr().out


def test_help_lists_every_command(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out


def test_console_script_installed():
    script = Path(sys.executable).parent / "nnunet-tubeconv"
    assert script.is_file(), f"console script missing next to {sys.executable}"
    r = subprocess.run([str(script), "--version"], capture_output=True, text=True, check=False)
    assert r.returncode == 0
    assert r.stdout.strip() == f"nnunet-tubeconv {__version__}"


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_has_help(name, capsys):
    with pytest.raises(SystemExit) as e:
        main([name, "--help"])
    assert e.value.code == 0
    assert "usage" in capsys.readouterr().out


def test_unknown_command_is_an_error(capsys):
    with pytest.raises(SystemExit) as e:
        main(["no-such-command"])
    assert e.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


@pytest.fixture
def fake_command(monkeypatch):
    """A sub-command ``fake`` whose run raises whatever the test puts into ``module.raise_this``."""
    module = types.ModuleType("nnunet_tubeconv_fake_command")
    module.raise_this = None
    module.add_arguments = lambda parser: parser.add_argument("--n", type=int, default=0)

    def run(args):
        if module.raise_this is not None:
            raise module.raise_this
        return args.n

    module.run = run
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setitem(COMMANDS, "fake", (module.__name__, "a test command"))
    return module


@pytest.mark.parametrize("error, code", [
    (ValueError("bad value; allowed are a, b"), 2),
    (FileNotFoundError("no such file: x.toml"), 2),
    (NotADirectoryError("x is not a folder"), 2),
    (RuntimeError("nnUNetv2_train failed"), 1),
    (ImportError("No module named 'onnx'"), 1),
    (KeyboardInterrupt(), 130),
])
def test_errors_are_reported_in_one_place(fake_command, capsys, error, code):
    fake_command.raise_this = error
    assert main(["fake"]) == code
    out, err = capsys.readouterr()
    assert out == "" and "Traceback" not in err and len(err.splitlines()) == 1
    if code == 130:
        assert err == "nnunet-tubeconv fake: interrupted\n"
    elif code == 2:
        assert err == f"nnunet-tubeconv fake: error: {error}\n"
    else:
        assert err == f"nnunet-tubeconv fake: error: {type(error).__name__}: {error}\n"


def test_run_result_is_the_exit_status_and_argparse_errors_share_the_prefix(fake_command, capsys):
    assert main(["fake", "--n", "1"]) == 1
    with pytest.raises(SystemExit) as e:
        main(["fake", "--n", "x"])
    assert e.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].startswith("nnunet-tubeconv fake: error: argument --n")


def test_a_bug_is_not_disguised_as_bad_input(fake_command):
    fake_command.raise_this = KeyError("a programming error keeps its traceback")
    with pytest.raises(KeyError):
        main(["fake"])


def test_nested_commands_name_themselves(tmp_path, capsys):
    assert main(["convert", "drive", str(tmp_path / "nothing"), "-o", str(tmp_path / "raw")]) == 2
    assert capsys.readouterr().err.startswith("nnunet-tubeconv convert drive: error: ")


# modules that may print their own error lines: the CLI itself; scripts run on their own, outside the CLI
# (python bundle/predict.py, python -m ...snakes.drive, python -m ...snakes.ablation, python -m ...real_data.page)
OWN_ERROR_LINES = {"nnunet_tubeconv/cli.py", "nnunet_tubeconv/deploy/bundle_predict.py",
                   "benchmarks/studies/snakes/drive.py", "benchmarks/studies/snakes/ablation.py",
                   "benchmarks/studies/real_data/page.py"}


def test_no_command_module_prints_its_own_errors():
    """run() raises; cli.main alone turns exceptions into the error line and the exit status."""
    own = []
    for folder in ("nnunet_tubeconv", "benchmarks"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = str(path.relative_to(ROOT))
            text = path.read_text()
            if rel not in OWN_ERROR_LINES and ("error: {" in text or "return 2\n" in text):
                own.append(rel)
    assert own == []
