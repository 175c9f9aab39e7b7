"""Shared plumbing for measurements and generated lesson content."""
import datetime
import json
import re
from pathlib import Path

from grader.impl import ROOT

ASSETS = ROOT / "assets"


def device_record() -> dict:
    """What a measurement was taken on: device, versions, date."""
    import torch
    import triton

    props = torch.cuda.get_device_properties(0)
    return {"device": props.name, "capability": f"sm_{props.major}{props.minor}", "sms": props.multi_processor_count,
            "torch": torch.__version__, "triton": triton.__version__, "cuda": torch.version.cuda,
            "date": datetime.date.today().isoformat()}


def device_tag() -> str:
    """A short name of this GPU for file names ("h100", "h200", else the name's last word), so that the data of
    several GPUs sits side by side under assets/."""
    import torch

    name = torch.cuda.get_device_name().lower()
    for tag in ("h100", "h200", "a100", "b200", "l40s", "l4"):
        if tag in name:
            return tag
    return name.split()[-1].replace("/", "-")


def save(relpath: str, data: dict, meta: dict | None = None) -> Path:
    """data under assets/relpath, with the device record (and `meta`, e.g. a digest of the timed code)."""
    path = ASSETS / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"meta": device_record() | (meta or {}), **data}, indent=1) + "\n")
    return path


def load(relpath: str) -> dict | None:
    path = ASSETS / relpath
    return json.loads(path.read_text()) if path.exists() else None


def replace_block(md_path: Path, name: str, text: str) -> bool:
    """Put `text` between the GENERATED markers called `name` in a Markdown file."""
    source = md_path.read_text()
    marker = re.escape(name)
    pattern = re.compile(rf"(<!-- BEGIN GENERATED {marker} -->\n).*?(<!-- END GENERATED {marker} -->)", re.DOTALL)
    if not pattern.search(source):
        raise ValueError(f"{md_path}: no GENERATED block called {name!r}")
    updated = pattern.sub(lambda m: m.group(1) + text.rstrip("\n") + "\n" + m.group(2), source)
    md_path.write_text(updated)
    return updated != source


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def measured_on(meta: dict) -> str:
    """The provenance line printed under every generated table."""
    return (f"*Measured on {meta['device']} ({meta['capability']}), torch {meta['torch']}, Triton {meta['triton']}, "
            f"{meta['date']}; medians of `triton.testing.do_bench`. Regenerate: `make measure` on a GPU, then "
            f"`make figures`.*\n")
