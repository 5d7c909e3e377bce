"""``croissant.json``: the release described in Croissant 1.0 (MLCommons), for dataset catalogues and loaders.

The card (README.md) is for people; this is the same release for machines. It is generated from
``archive.json`` and the manifest when the release is sealed: the files (the manifest as a FileObject with
its SHA-256, the shards of each format as a FileSet), one record set ``samples`` whose records are the
manifest's rows (sample id, shard, index, every label as 0/1, every steering probability, the pixel hash and
the shard path of each format), the licence and what the data is. ``mlcroissant`` loads it; the tests check
that its records equal the manifest's rows.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from ..utils.hashing import sha256_file
from .layout import FORMATS, MANIFEST

CONFORMS_TO = "http://mlcommons.org/croissant/1.0"
CONTEXT = {
    "@language": "en",
    "@vocab": "https://schema.org/",
    "citeAs": "cr:citeAs",
    "column": "cr:column",
    "conformsTo": "dct:conformsTo",
    "cr": "http://mlcommons.org/croissant/",
    "data": {"@id": "cr:data", "@type": "@json"},
    "dataType": {"@id": "cr:dataType", "@type": "@vocab"},
    "dct": "http://purl.org/dc/terms/",
    "equivalentProperty": "cr:equivalentProperty",
    "examples": {"@id": "cr:examples", "@type": "@json"},
    "extract": "cr:extract",
    "field": "cr:field",
    "fileObject": "cr:fileObject",
    "fileProperty": "cr:fileProperty",
    "fileSet": "cr:fileSet",
    "format": "cr:format",
    "includes": "cr:includes",
    "isLiveDataset": "cr:isLiveDataset",
    "jsonPath": "cr:jsonPath",
    "key": "cr:key",
    "md5": "cr:md5",
    "parentField": "cr:parentField",
    "path": "cr:path",
    "rai": "http://mlcommons.org/croissant/RAI/",
    "recordSet": "cr:recordSet",
    "references": "cr:references",
    "regex": "cr:regex",
    "repeated": "cr:repeated",
    "replace": "cr:replace",
    "samplingRate": "cr:samplingRate",
    "sc": "https://schema.org/",
    "separator": "cr:separator",
    "source": "cr:source",
    "subField": "cr:subField",
    "transform": "cr:transform",
}
#: encodingFormat of each shard format's files
ENCODING = {"h5": "application/x-hdf5", "parquet": "application/x-parquet", "webdataset": "application/x-tar"}
#: Croissant data types of the manifest's Arrow column types
_TYPES = {"string": "sc:Text", "large_string": "sc:Text", "int8": "sc:Integer", "int16": "sc:Integer", "int32": "sc:Integer",
          "int64": "sc:Integer", "float": "sc:Float", "double": "sc:Float", "bool": "sc:Boolean"}


def _field(name: str, dtype: str, description: str) -> dict[str, Any]:
    return {"@type": "cr:Field", "@id": f"samples/{name}", "name": name, "description": description, "dataType": dtype,
            "source": {"fileObject": {"@id": "manifest"}, "extract": {"column": name}}}


def _describe(column: str, labels: list[str]) -> str:
    if column in labels:
        return f"1 when the sample was made to show {column}, else 0"
    if column.startswith("prob_") and column[5:] in labels:
        return f"the steering classifier's probability of {column[5:]} on the released image"
    return {
        "sample_id": "the sample's id in this release",
        "shard": "the release shard that holds the sample",
        "index": "the sample's row in its shard",
        "seed": "the seed of its latent's last optimisation attempt",
        "pixel_sha256": "SHA-256 of the image's uint8 pixels, row-major",
        "pair_id": "paired counterfactuals: the pair (group of one base and its variants) the sample belongs to, -1 for none",
        "base_sample_id": "paired counterfactuals: the base a variant was edited from (empty for a base or a single sample)",
        "edit": "paired counterfactuals: the one finding a variant adds (+Name) or removes (-Name) from its base, else empty",
    }.get(column, f"{column[:-5]} shard path of the sample" if column.endswith("_path") else column)


def croissant_metadata(info: Mapping[str, Any], root: str | Path) -> dict[str, Any]:
    """The Croissant JSON-LD of the release in ``root`` described by ``info`` (its archive.json)."""
    root = Path(root)
    labels = list(info["label_names"])
    schema = pq.read_schema(root / MANIFEST)
    cfg = info.get("config") or {}
    licence = str((cfg.get("archive") or {}).get("license", "other"))
    counts = info.get("counts", {})
    files = [{
        "@type": "cr:FileObject", "@id": "manifest", "name": "manifest", "contentUrl": MANIFEST,
        "encodingFormat": "application/x-parquet", "sha256": sha256_file(root / MANIFEST),
        "description": "one row per released sample: labels, probabilities, shard position, pixel hash",
    }]
    for fmt in info["formats"]:
        if fmt in FORMATS:
            files.append({"@type": "cr:FileSet", "@id": f"{fmt}-shards", "name": f"{fmt}-shards", "encodingFormat": ENCODING[fmt],
                          "includes": f"{fmt}/*.{FORMATS[fmt]}", "description": f"the images in {fmt} shards (docs/archive-format.md)"})
    fields = [_field(f.name, _TYPES.get(str(f.type), "sc:Text"), _describe(f.name, labels)) for f in schema
              if str(f.type) in _TYPES]
    out = {
        "@context": CONTEXT,
        "@type": "sc:Dataset",
        "name": str(info["name"]),
        "conformsTo": CONFORMS_TO,
        "description": (
            f"SYNTHETIC chest X-rays: {counts.get('n_released', '?')} images at {info['resolution']} px generated by a "
            f"progressive GAN and labelled by latent class optimisation for {', '.join(labels)}. No image shows a real "
            "patient. The dataset card (README.md) states how they were made, what was audited and how well the labels hold."
        ),
        "license": licence,
        "url": "README.md",
        "version": f"{int(info['format_version'])}.0.0",
        "citeAs": f"{info['name']}: a synthetic chest X-ray archive made with synthcxr (format {int(info['format_version'])})",
        "keywords": ["synthetic data", "chest X-ray", "GAN", "multi-label"],
        "isLiveDataset": False,
        "distribution": files,
        "recordSet": [{
            "@type": "cr:RecordSet", "@id": "samples", "name": "samples", "key": {"@id": "samples/sample_id"},
            "description": "the released samples, one record per manifest row",
            "field": fields,
        }],
    }
    if info.get("created"):
        out["datePublished"] = str(info["created"])
    return out
