"""Exports to the formats people already load: SAEDashboard's batch JSON and Neuronpedia's bulk-import layout.

Why: researchers host dashboards on Neuronpedia and read SAEDashboard output with existing tools; writing
those layouts from our statistics lets them do so without recomputing anything. The field mapping is in
the README ("Dashboards" section); fields we have no honest value for are left empty, never invented.
"""

from __future__ import annotations

import gzip
import json
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from hybrid_sae_ext.dashboards.records import DashboardData
from hybrid_sae_ext.io import atomic_path
from hybrid_sae_ext.progress import progress_bar

FEATURES_PER_BATCH = 128
CREATOR_ID = "hybrid-sae-ext"


def _bar_centres(hist: dict[str, Any]) -> list[float]:
    width = (hist["high"] - hist["low"]) / len(hist["counts"])
    return [round(hist["low"] + (i + 0.5) * width, 5) for i in range(len(hist["counts"]))]


def _activation(example: dict[str, Any], bin_min: float, bin_max: float, bin_contains: float) -> dict[str, Any]:
    return {"bin_min": bin_min, "bin_max": bin_max, "bin_contains": bin_contains, "tokens": example["tokens"],
            "values": example["values"], "qualifying_token_index": example["center"]}


TOP_ACTIVATIONS_BIN = -1
"""SAEDashboard's marker of the top-activations group: ``bin_min = bin_contains = -1`` (its quantile groups
carry the range's lower edge and the share of firings in the range instead)."""


def saedashboard_feature(record: dict[str, Any], data: DashboardData) -> dict[str, Any]:
    """One feature as SAEDashboard's ``NeuronpediaDashboardFeature.to_dict()`` lays it out."""
    activations = []
    if record["top_examples"]:
        acts = [e["activation"] for e in record["top_examples"]]
        activations += [_activation(e, TOP_ACTIVATIONS_BIN, max(acts), TOP_ACTIVATIONS_BIN)
                        for e in record["top_examples"]]
    groups: dict[float, list[dict[str, Any]]] = {}
    for e in record["quantile_examples"]:
        groups.setdefault(e["group"], []).append(e)
    for group in groups.values():
        acts = [e["activation"] for e in group]
        # Each example's exact quantile among the latent's firings: the share in [min, max] is their spread.
        quantiles = [e["quantile"] for e in group]
        share = round(max(quantiles) - min(quantiles), 6)
        activations += [_activation(e, min(acts), max(acts), share) for e in group]
    logits = record["logits"]
    return {
        "feature_index": record["index"],
        "neuron_alignment_indices": [], "neuron_alignment_values": [], "neuron_alignment_l1": [],
        "correlated_neurons_indices": [], "correlated_neurons_l1": [], "correlated_neurons_pearson": [],
        "correlated_features_indices": [], "correlated_features_l1": [], "correlated_features_pearson": [],
        "neg_str": [t["token"] for t in logits["negative"]], "neg_values": [t["value"] for t in logits["negative"]],
        "pos_str": [t["token"] for t in logits["positive"]], "pos_values": [t["value"] for t in logits["positive"]],
        "frac_nonzero": record["density"],
        "freq_hist_data_bar_values": _bar_centres(record["histogram"]),
        "freq_hist_data_bar_heights": record["histogram"]["counts"],
        "logits_hist_data_bar_values": _bar_centres(logits["histogram"]),
        "logits_hist_data_bar_heights": logits["histogram"]["counts"],
        "n_prompts_total": int(data.meta["rows"]), "n_tokens_in_prompt": int(data.meta["context_size"]),
        "dataset": str(data.meta["config"]["dataset"]), "decoder_weights_dist": [],
        "activations": activations,
    }


def _layer(hook_name: str) -> int:
    match = re.match(r"blocks\.(\d+)\.", hook_name)
    return int(match.group(1)) if match else 0


def source_id(data: DashboardData) -> str:
    """Neuronpedia's source id, ``<layer>-<set>``, with the set named after the architecture and width."""
    return f"{_layer(data.meta['hook_name'])}-{data.meta['architecture']}-{data.d_sae}"


def _write_jsonl_gz(path: Path, rows: list[dict[str, Any]]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode(), compresslevel=1))


def _write_jsonl(path: Path, row: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(row) + "\n")


def neuronpedia_model_id(model_name: str) -> str:
    """Neuronpedia's ``Model.id`` for a model name: its schema allows ``[a-zA-Z0-9_-]`` and lowercases ids. The
    export's model folder has this name too, so the folder, ``model.jsonl`` and every row's ``modelId`` agree."""
    return re.sub(r"[^a-z0-9_-]+", "-", model_name.lower()).strip("-")


def model_owner(model_name: str) -> str:
    """Neuronpedia's required ``Model.owner``: the hub organisation of ``org/name`` model names, else unknown."""
    return model_name.split("/", 1)[0] if "/" in model_name else "unknown"


def neuronpedia_rows(feature: dict[str, Any], data: DashboardData, record: dict[str, Any],
                     created: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The ``Feature`` row and ``Activation`` rows of one latent in Neuronpedia's bulk-import schema."""
    model_id, layer = neuronpedia_model_id(data.meta["model_name"]), source_id(data)
    row = {k: feature[k] for k in feature if k not in {"feature_index", "activations", "n_prompts_total",
                                                       "n_tokens_in_prompt", "dataset"}}
    row |= {"modelId": model_id, "layer": layer, "index": str(record["index"]), "creatorId": CREATOR_ID,
            "createdAt": created, "maxActApprox": record["max"], "hasVector": False, "vector": [],
            "vectorLabel": None, "vectorDefaultSteerStrength": record["max"], "hookName": data.meta["hook_name"],
            "topkCosSimIndices": [n["latent"] for n in record["decoder_neighbours"]],
            "topkCosSimValues": [n["cosine"] for n in record["decoder_neighbours"]], "sourceSetName": layer.split("-", 1)[1]}
    activations = []
    for j, act in enumerate(feature["activations"]):
        values = act["values"]
        activations.append({
            "id": f"{layer}-{record['index']}-{j}", "tokens": act["tokens"], "index": str(record["index"]),
            "layer": layer, "modelId": model_id, "maxValue": max(values), "maxValueTokenIndex": values.index(max(values)),
            "minValue": min(values), "values": values, "creatorId": CREATOR_ID, "dataSource": None, "dataIndex": None,
            "dfaValues": [], "dfaTargetIndex": None, "dfaMaxValue": None, "createdAt": created, "lossValues": [],
            "logitContributions": None, "binMin": act["bin_min"], "binMax": act["bin_max"],
            "binContains": act["bin_contains"], "qualifyingTokenIndex": act["qualifying_token_index"],
            "zIndices": [], "zValues": [],
        })
    return row, activations


def write_exports(data: DashboardData, folder: Path, progress: bool = False) -> Path:
    """Write ``saedashboard/batch-N.json`` and ``neuronpedia/<model>/<source>/...`` under ``folder``."""
    created = datetime.now(timezone.utc).isoformat()
    layer = source_id(data)
    name = data.meta["model_name"]
    model_id = neuronpedia_model_id(name)
    neuronpedia = Path(folder) / "neuronpedia" / model_id / layer
    starts = range(0, data.d_sae, FEATURES_PER_BATCH)
    for start in progress_bar(starts, desc="dashboard exports", unit="batch", enabled=progress):
        latents = range(start, min(start + FEATURES_PER_BATCH, data.d_sae))
        records = [data.record(i) for i in latents]
        features = [saedashboard_feature(r, data) for r in records]
        batch = start // FEATURES_PER_BATCH
        with atomic_path(Path(folder) / "saedashboard" / f"batch-{batch}.json") as tmp:
            tmp.write_text(json.dumps({"model_id": data.meta["model_name"], "layer": _layer(data.meta["hook_name"]),
                                       "sae_set": layer.split("-", 1)[1], "features": features}, separators=(",", ":")))
        rows = [neuronpedia_rows(f, data, r, created) for f, r in zip(features, records)]
        _write_jsonl_gz(neuronpedia / "features" / f"batch-{batch}.jsonl.gz", [feature for feature, _ in rows])
        _write_jsonl_gz(neuronpedia / "activations" / f"batch-{batch}.jsonl.gz", [a for _, acts in rows for a in acts])
    set_name = layer.split("-", 1)[1]
    _write_jsonl(neuronpedia / "model.jsonl", {
        "id": model_id, "instruct": False, "creatorId": CREATOR_ID, "displayNameShort": name, "displayName": name,
        "tlensId": name, "dimension": data.meta["d_in"], "layers": data.meta["model_layers"],
        "neuronsPerLayer": data.meta["model_d_mlp"], "owner": model_owner(name),
        "visibility": "PUBLIC", "createdAt": created, "updatedAt": created})
    _write_jsonl(neuronpedia / "sourceset.jsonl", {
        "modelId": model_id, "name": set_name, "creatorId": CREATOR_ID, "hasDashboards": True,
        "visibility": "PUBLIC", "description": f"{data.meta['architecture']} SAE, {data.d_sae} latents",
        "type": data.meta["hook_name"], "creatorName": CREATOR_ID, "createdAt": created})
    _write_jsonl(neuronpedia / "source.jsonl", {
        "id": layer, "modelId": model_id, "setName": set_name, "creatorId": CREATOR_ID,
        "hasDashboards": True, "visibility": "PUBLIC", "num_prompts": int(data.meta["rows"]),
        "num_tokens_in_prompt": int(data.meta["context_size"]), "dataset": str(data.meta["config"]["dataset"]),
        "createdAt": created})
    _write_jsonl(neuronpedia / "release.jsonl", {
        "name": set_name, "description": f"Dashboards of {data.meta['sae_path']}", "creatorName": CREATOR_ID,
        "creatorId": CREATOR_ID, "visibility": "PUBLIC", "createdAt": created})
    return Path(folder)
