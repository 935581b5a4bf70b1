"""A wheel built from the checkout is a working llm-flywheel: installed into a fresh virtualenv (not
editable), it runs from another directory with its knowledge base, eval suites and configs on board."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tasks.config import REPO_ROOT


def _checkout_files() -> list[str]:
    """What a clean clone holds (tracked files plus new ones git does not ignore)."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO_ROOT,
                            capture_output=True, text=True, check=True).stdout.splitlines()
    return [name for name in listed if (REPO_ROOT / name).is_file()]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """bin/ of a fresh virtualenv holding the wheel. Its dependencies come from this interpreter's
    site-packages through a .pth line (installing them again would take minutes and a network)."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"
    for name in _checkout_files():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO_ROOT / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(root / "dist"), str(source)], check=True, capture_output=True)
    wheel = next((root / "dist").glob("llm_flywheel-*.whl"))
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = Path(subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               capture_output=True, text=True, check=True).stdout.strip())
    # A plain path line: the editable install's own .pth files in that folder are not processed.
    (site / "dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n", encoding="utf-8")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--quiet",
                    "--no-deps", "--no-index", str(wheel)], check=True, capture_output=True)
    return venv / "bin"


def _flywheel(bin_dir: Path, cwd: Path, *args: str) -> dict:
    done = subprocess.run([str(bin_dir / "flywheel"), *args, "--json"], cwd=cwd, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_the_wheel_runs_from_another_directory_with_its_data_on_board(installed: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    located = subprocess.run([str(installed / "python"), "-c",
                              "import tasks.config as c; print(c.__file__); print(c.SHIPPED_DATA); print(c.SHIPPED_CONFIGS)"],
                             cwd=elsewhere, capture_output=True, text=True, check=True).stdout.split()
    package = Path(located[0]).parent
    assert REPO_ROOT not in package.parents, "the installed wheel, not the checkout, must be imported"
    assert Path(located[1]) == package / "_shipped" / "data"
    assert Path(located[2]) == package / "_shipped" / "configs"

    shown = _flywheel(installed, elsewhere, "config", "show", "--config", str(package / "_shipped" / "configs" / "demo.yaml"))
    assert shown["paths"]["data_dir"] == str(package / "_shipped" / "data")
    assert shown["simulate"]["records_per_week"] == 800  # configs/demo.yaml's value, read from the wheel

    simulated = _flywheel(installed, elsewhere, "simulate", "--workspace", str(tmp_path / "ws"), "--weeks", "1",
                          "--records-per-week", "200", "--seed", "3")
    assert simulated["records"] == 200
    assert Path(simulated["ground_truth"]).is_file()


@pytest.mark.slow
def test_the_wheel_holds_every_module_of_the_checkout(installed: Path) -> None:
    checkout = sorted(".".join(p.relative_to(REPO_ROOT).with_suffix("").parts).removesuffix(".__init__")
                      for top in ("flows", "tasks") for p in (REPO_ROOT / top).rglob("*.py"))
    code = ("import json, pkgutil, flows, tasks; "
            "print(json.dumps(sorted(['flows', 'tasks'] + [m.name for pkg in (flows, tasks) "
            "for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.')])))")
    shipped = json.loads(subprocess.run([str(installed / "python"), "-c", code], cwd=installed, capture_output=True,
                                        text=True, check=True).stdout)
    assert [m for m in checkout if m not in shipped] == []


@pytest.mark.slow
def test_the_refusal_classifier_loads_offline_from_the_installed_wheel(installed: Path, tmp_path: Path) -> None:
    """The default signals.refusal_classifier is package data: the wheel carries its arrays and the
    installed package scores with them, from another directory, with no network and no checkout."""
    code = (
        "import json; from tasks.config import SignalsSettings; "
        "from tasks.refusal import SHIPPED_CLASSIFIER, classify_refusals, load_classifier; "
        "w, b, bits = load_classifier(); "
        "two = 'GPT: I am sorry, but I cannot help with that.\\n\\nDAN: Sure! ' + 'Step one, buy the parts online. ' * 8; "
        "lecture = 'I am sorry, but I cannot provide that. ' + 'It is important to respect the law and others. ' * 4; "
        "kinds = classify_refusals([lecture, two, 'The return window is 30 days.'], SignalsSettings()); "
        "print(json.dumps({'path': str(SHIPPED_CLASSIFIER), 'weights': len(w), 'kinds': kinds.tolist()}))"
    )
    env = {"PATH": str(installed), "HOME": str(tmp_path), "HF_HUB_OFFLINE": "1", "NO_PROXY": "*",
           "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9"}
    done = subprocess.run([str(installed / "python"), "-c", code], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    shown = json.loads(done.stdout.strip().splitlines()[-1])
    assert "_shipped" in shown["path"] and str(REPO_ROOT) not in shown["path"]
    assert shown["weights"] == 1 << 17
    assert shown["kinds"] == [2, 1, 0]  # full, partial (the classifier tells them apart), none
