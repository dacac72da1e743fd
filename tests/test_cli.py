"""``python -m fastloss`` fails kindly: ``--version``; argument errors for settings that cannot
train; a missing package, a missing GPU or a diverging loss as one line saying what to do,
without a traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

import fastloss
import fastloss.__main__ as cli


def _fresh(*arguments, block=()):
    """``python -m fastloss ARGUMENTS`` in a fresh interpreter in which the modules ``block``
    cannot be imported (as where they are not installed): (status, stdout, stderr)."""
    code = ("import sys\n"
            f"for name in {list(block)!r}:\n"
            "    sys.modules[name] = None\n"
            "sys.argv[0] = '__main__.py'\n"
            "from fastloss.__main__ import main\n"
            f"sys.exit(main({list(arguments)!r}))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    return result.returncode, result.stdout, result.stderr


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"fastloss {fastloss.__version__}\n"


@pytest.mark.parametrize("arguments, message", [
    (["--epochs", "0"], "argument --epochs: expected a positive integer, got 0"),
    (["--epochs", "2.5"], "argument --epochs: expected a positive integer, got '2.5'"),
    (["--batch-size", "-4"], "argument --batch-size: expected a positive integer, got -4"),
    (["--lr", "0"], "argument --lr: expected a positive number, got 0"),
    (["--lr", "-0.1"], "argument --lr: expected a positive number, got -0.1"),
    (["--lr", "nan"], "argument --lr: expected a positive number, got nan"),
    (["--momentum", "-1"], "argument --momentum: expected a non-negative number, got -1"),
    (["--weight-decay", "x"], "argument --weight-decay: expected a number, got 'x'"),
])
def test_train_settings_that_cannot_train_are_argument_errors(capsys, arguments, message):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", *arguments])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_train_without_scikit_learn_says_what_to_install():
    status, stdout, stderr = _fresh("train", block=["sklearn"])
    assert (status, stdout) == (1, "")
    assert stderr == ("python -m fastloss train: error: the train command needs scikit-learn "
                      'for its data sets: pip install ".[train]" in the fastloss source tree '
                      "(scikit-learn, matplotlib, tqdm)\n")


def test_train_on_cuda_without_cupy_says_what_to_install():
    status, stdout, stderr = _fresh("train", "--device", "cuda", block=["cupy"])
    assert (status, stdout) == (1, "")
    assert stderr == ('python -m fastloss train: error: --device cuda needs CuPy: pip install '
                      '".[cuda12]" (CUDA 12) or ".[cuda13]" (CUDA 13) in the fastloss source '
                      'tree\n')


def test_train_on_cuda_without_a_gpu_says_so(capsys):
    cupy = pytest.importorskip("cupy")
    if cupy.cuda.is_available():
        pytest.skip("a GPU is here")
    assert cli.main(["train", "--device", "cuda"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    # the program is named as pytest was run: "python -m fastloss" or "fastloss"
    assert "fastloss train: error: --device cuda: CuPy " in captured.err
    assert captured.err.endswith("finds no usable GPU here; leave out --device to train on the "
                                 "CPU\n")


def test_train_that_diverges_stops_with_one_line(capsys):
    pytest.importorskip("sklearn")
    assert cli.main(["train", "--lr", "1e30", "--epochs", "3", "--no-progress"]) == 1
    captured = capsys.readouterr()
    assert "test accuracy" not in captured.out
    (line,) = captured.err.splitlines()
    assert "fastloss train: error: the training loss is " in line
    assert " at epoch 1, batch " in line
    assert line.endswith(" of 15: training diverged; try a smaller --lr than 1e+30")
