"""The README runs as written: its Python snippets run (the density one on a tiny trained model),
and every command in it names a real entry point and options that entry point accepts."""
import importlib
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from owf.config import Config
from owf.train import train

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def blocks(lang):
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def commands():
    """Every command line of the README's bash blocks, split at && and without its comment."""
    out = []
    for block in blocks("bash"):
        for line in block.splitlines():
            line = line.split("  #")[0].strip()
            out += [c.strip() for c in line.split("&&") if c.strip()]
    return out


def test_the_readme_has_the_snippets_and_commands_this_test_checks():
    assert len(blocks("python")) == 3
    cmds = commands()
    assert "python -m owf.train" in cmds and "python -m pytest -q" in cmds
    assert sum(c.startswith("python -m owf.") for c in cmds) >= 10


def test_the_jvp_snippet_runs():
    (snippet,) = [b for b in blocks("python") if "from owf_kernels import jvp" in b]
    scope = {}
    exec(compile(snippet, "README.md (jvp)", "exec"), scope)
    assert scope["JV"].shape == (4, 8, 3, 16, 16) and scope["trace"].shape == (8,)
    net = scope["net"]
    last_bias = net[3].bias                              # J does not depend on it: no gradient through JV
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters() if p is not last_bias)
    assert last_bias.grad is None or not last_bias.grad.any()
    assert scope["dudt"].shape == scope["u"].shape == scope["x"].shape


def test_the_kernels_snippet_runs():
    (snippet,) = [b for b in blocks("python") if "import linear_jvp" in b]
    scope = {}
    exec(compile(snippet, "README.md (kernels)", "exec"), scope)
    assert scope["y_dot"].shape == (3, 64, 48) and scope["h_dot"].shape == (3, 64, 32) and scope["lz"].dim() == 0


def test_the_density_snippet_runs_on_a_tiny_model(tmp_path, monkeypatch, capsys):
    (snippet,) = [b for b in blocks("python") if "owf.load" in b]
    assert 'owf.load("runs/ring-owf-s0")' in snippet           # the quickstart's run folder
    monkeypatch.chdir(tmp_path)
    train(Config(steps=20, g_hidden="16,16", d_hidden="16,16", batch=64, samples=64, log_every=10,
                 device="cpu", out="runs/ring-owf-s0"), progress=False)
    exec(compile(snippet, "README.md (density)", "exec"), {})
    printed = capsys.readouterr().out
    assert re.match(r"log ζ̂ = -?\d+\.\d{3} ± \d\.\d{3}, ESS \d+; test NLL -?\d+\.\d{3} nats \(the mixture's own: "
                    r"-?\d\.\d{3}\)", printed), printed


def _owf_parser(module):
    return importlib.import_module(module).build_parser()


_HELP = {}


def _script_help(script):
    if script not in _HELP:
        p = subprocess.run([sys.executable, str(ROOT / script), "--help"], capture_output=True, text=True,
                           timeout=300, cwd=ROOT, env=dict(os.environ, TRITON_INTERPRET="1"))
        assert p.returncode == 0, p.stderr
        _HELP[script] = p.stdout
    return _HELP[script]


@pytest.mark.parametrize("cmd", [c for c in commands() if not c.startswith(("pip ", "python -m pytest"))])
def test_every_readme_command_is_accepted(cmd):
    argv = shlex.split(cmd)
    assert argv[0] == "python", cmd
    if argv[1] == "-m":
        module, args = argv[2], argv[3:]
        if args == ["--help"]:
            assert "--help" in _owf_parser("owf.config" if module == "owf.train" else module).format_help()
        elif module == "owf.train":
            given = vars(_owf_parser("owf.config").parse_args(args))
            opts = {k: given.pop(k) for k in ("resume", "overwrite", "dry_run")}
            if not opts["resume"]:
                Config(**given)                        # the values pass the config's checks too
        else:
            _owf_parser(module).parse_args(args)
    else:                                              # a script of benchmarks/: its flags are in its --help
        help_text = _script_help(argv[1])
        for flag in (a.split("=")[0] for a in argv[2:] if a.startswith("--")):
            assert f"{flag} " in help_text or f"{flag}\n" in help_text, (cmd, flag)
