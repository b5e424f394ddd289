"""The install split: requirements.txt is the runtime only, requirements-test.txt (and setup.py's [test] extra) adds
the test tools, and .ci/run installs the latter and exports the archive's location for the tests that read it."""
import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEST_ONLY = {"pytest", "tf_keras", "jax", "torch"}


def requirement_names(path):
    names = []
    for line in (ROOT / path).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            names.append(re.split(r"[\[<>=!~ ]", line, maxsplit=1)[0].lower())
    return names


def setup_keywords():
    tree = ast.parse((ROOT / "setup.py").read_text())
    call = next(node for node in ast.walk(tree) if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "setup")
    return {keyword.arg: ast.literal_eval(keyword.value) for keyword in call.keywords if keyword.arg in ("install_requires", "extras_require")}


def test_runtime_requirements_hold_no_test_tools_or_other_backends():
    runtime = requirement_names("requirements.txt")
    assert "tensorflow" in runtime and "keras" in runtime and "matplotlib" in runtime
    assert not TEST_ONLY & set(runtime)


def test_test_requirements_add_the_tools_to_the_runtime():
    lines = (ROOT / "requirements-test.txt").read_text().splitlines()
    assert "-r requirements.txt" in lines
    assert TEST_ONLY <= set(requirement_names("requirements-test.txt"))
    assert "torch==2.13.0" in lines


def test_setup_extras_match_the_files():
    keywords = setup_keywords()
    install = {re.split(r"[\[<>=]", item)[0] for item in keywords["install_requires"]}
    assert not TEST_ONLY & install and "tensorflow" not in install  # the backend is an extra
    extras = keywords["extras_require"]
    assert {re.split(r"[\[<>=]", item)[0] for item in extras["test"]} >= TEST_ONLY | {"tensorflow"}
    assert [re.split(r"[\[<>=]", item)[0] for item in extras["jax"]] == ["jax"]


def test_ci_installs_the_test_requirements_and_names_the_archive():
    script = (ROOT / ".ci" / "run").read_text()
    assert "pip install -q -r requirements-test.txt" in script
    assert "THREEDGAN_DATA" in script and script.rstrip().endswith("python3 -m pytest")
