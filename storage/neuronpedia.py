"""Export a transcoder's features in Neuronpedia's bulk-import layout (the one `neuronpedia-utils` writes and
imports): one folder per source, JSON-lines files gzipped in batches.

    <out>/<model>/<layer>-<source_set>/
      model.jsonl  source.jsonl            one record each (ids, dataset, prompt counts)
      features/batch-<i>.jsonl.gz          one Feature record per feature
      activations/batch-<i>.jsonl.gz       one Activation record per stored example (top and quantile bands)

Feature fields filled: modelId, layer (the source id), index, maxActApprox, frac_nonzero, pos_str/pos_values
(logit_top), neg_str/neg_values (logit_bottom), topkCosSimIndices/Values (decoder neighbours in the same
transcoder), freq_hist_data_bar_heights/values (the activation histogram: counts and bin centres); the
neuron/feature correlation fields Neuronpedia computes itself are left empty. Activation fields: tokens, values
(the example window), maxValue, maxValueTokenIndex, minValue, qualifyingTokenIndex (the example token),
dataIndex (context_id), binMin/binMax/binContains (-1 for top examples; the band's activation range and share of
active tokens for quantile-band examples).
"""

from __future__ import annotations

import gzip
import json
import os
from collections import defaultdict
from datetime import datetime, timezone

from interp.model import mlp_hooks
from storage import layout
from storage.db import readers


def _read(transcoder_id: str) -> dict:
    with readers.reader() as con:
        tc = readers.frame(con, "SELECT * FROM transcoders WHERE transcoder_id = ?", [transcoder_id])
        if tc.height == 0:
            raise LookupError(f"No transcoder {transcoder_id!r}; materialize `transcoders` first.")
        tc = tc.row(0, named=True)
        feats = readers.frame(
            con, "SELECT * FROM features WHERE transcoder_id = ? ORDER BY feature", [transcoder_id]
        )
        if feats.height == 0:
            raise LookupError(
                f"No features for {transcoder_id!r}; materialize `features` for layer {tc['layer']}."
            )
        tokens = readers.frame(
            con,
            "SELECT feature, kind, rank, token_id, value FROM feature_tokens WHERE transcoder_id = ? "
            "AND kind IN ('logit_top', 'logit_bottom') ORDER BY feature, kind, rank",
            [transcoder_id],
        )
        neighbors = readers.frame(
            con,
            "SELECT feature, nb_feature, cosine FROM feature_neighbors WHERE transcoder_id = ? "
            "AND nb_transcoder_id = transcoder_id ORDER BY feature, rank",
            [transcoder_id],
        )
        examples = readers.frame(
            con,
            """SELECT e.feature, e.kind, e.rank, e.context_id, e.position, e.activation, e.window_start, e.token_acts,
                      c.tokens[e.window_start + 1 : e.window_start + len(e.token_acts)] AS token_ids
               FROM feature_examples e JOIN contexts c USING (context_id)
               WHERE e.transcoder_id = ? ORDER BY e.feature, e.kind, e.rank""",
            [transcoder_id],
        )
        vocab = dict(
            readers.frame(
                con, "SELECT token_id, token_str FROM vocab WHERE model = ?", [tc["model"]]
            ).iter_rows()
        )
        n_ctx = readers.frame(con, "SELECT count(*) AS n FROM contexts WHERE split = 'eval'")["n"][0]
    return {
        "tc": tc,
        "features": feats,
        "tokens": tokens,
        "neighbors": neighbors,
        "examples": examples,
        "vocab": vocab,
        "n_contexts": n_ctx,
    }


def _feature_record(row: dict, model: str, source: str, toks: dict, nbs: list, created: str) -> dict:
    edges, counts = row["hist_edges"] or [], row["hist_counts"] or []
    top, bottom = toks.get("logit_top", []), toks.get("logit_bottom", [])
    return {
        "modelId": model,
        "layer": source,
        "index": str(row["feature"]),
        "createdAt": created,
        "maxActApprox": row["max_act"],
        "hasVector": False,
        "vector": [],
        "topkCosSimIndices": [n[0] for n in nbs],
        "topkCosSimValues": [n[1] for n in nbs],
        "neuron_alignment_indices": [],
        "neuron_alignment_values": [],
        "neuron_alignment_l1": [],
        "correlated_neurons_indices": [],
        "correlated_neurons_pearson": [],
        "correlated_neurons_l1": [],
        "correlated_features_indices": [],
        "correlated_features_pearson": [],
        "correlated_features_l1": [],
        "pos_str": [t[0] for t in top],
        "pos_values": [t[1] for t in top],
        "neg_str": [t[0] for t in bottom],
        "neg_values": [t[1] for t in bottom],
        "frac_nonzero": row["density"],
        "freq_hist_data_bar_heights": list(counts),
        "freq_hist_data_bar_values": [(a + b) / 2 for a, b in zip(edges, edges[1:])],
        "logits_hist_data_bar_heights": [],
        "logits_hist_data_bar_values": [],
        "decoder_weights_dist": [],
        "label": row["label"],
    }


def _activation_record(ex: dict, model: str, source: str, vocab: dict, band: tuple, created: str) -> dict:
    values = list(ex["token_acts"])[: len(ex["token_ids"])]
    peak = max(range(len(values)), key=values.__getitem__) if values else 0
    return {
        "id": f"{source}:{ex['feature']}:{ex['kind']}:{ex['rank']}",
        "modelId": model,
        "layer": source,
        "index": str(ex["feature"]),
        "tokens": [vocab.get(t, f"<{t}>") for t in ex["token_ids"]],
        "values": values,
        "maxValue": values[peak] if values else 0.0,
        "maxValueTokenIndex": peak,
        "minValue": min(values) if values else 0.0,
        "qualifyingTokenIndex": ex["position"] - ex["window_start"],
        "dataIndex": str(ex["context_id"]),
        "dataSource": None,
        "binMin": band[0],
        "binMax": band[1],
        "binContains": band[2],
        "createdAt": created,
    }


def _write_jsonl_gz(path: str, records: list[dict]) -> None:
    with gzip.open(path, "wt", encoding="utf-8", compresslevel=5) as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


def export(
    transcoder_id: str, source_set: str = "atlas-tc", out_dir: str | None = None, batch_size: int = 256
) -> str:
    """Write the Neuronpedia bulk-import folder of `transcoder_id` (atomically); returns its path."""
    data = _read(transcoder_id)
    tc, vocab = data["tc"], data["vocab"]
    model, source = tc["model"], f"{tc['layer']}-{source_set}"
    created = datetime.now(timezone.utc).isoformat()
    toks: dict[int, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for f, kind, _, token_id, value in data["tokens"].iter_rows():
        toks[f][kind].append((vocab.get(token_id, f"<{token_id}>"), value))
    nbs: dict[int, list] = defaultdict(list)
    for f, nb, cos in data["neighbors"].iter_rows():
        nbs[f].append((nb, cos))
    by_feature: dict[int, list] = defaultdict(list)
    for ex in data["examples"].iter_rows(named=True):
        by_feature[ex["feature"]].append(ex)
    path = layout.join(
        out_dir or layout.join(layout.exports_dir(), "neuronpedia"), layout.safe_name(model), source
    )
    feats = data["features"].to_dicts()
    with layout.atomic_dir(path) as tmp:
        os.makedirs(os.path.join(tmp, "features"))
        os.makedirs(os.path.join(tmp, "activations"))
        with open(os.path.join(tmp, "model.jsonl"), "w") as f:
            f.write(json.dumps({"id": model, "displayName": model, "createdAt": created}) + "\n")
        with open(os.path.join(tmp, "source.jsonl"), "w") as f:
            hook_in, hook_out = mlp_hooks(tc["layer"])
            source_row = {
                "id": source,
                "modelId": model,
                "setName": source_set,
                "hookName": hook_in,
                "hookNameOut": hook_out,
                "num_prompts": int(data["n_contexts"]),
                "transcoder_id": transcoder_id,
                "createdAt": created,
            }
            f.write(json.dumps(source_row) + "\n")
        for b, i in enumerate(range(0, len(feats), batch_size)):
            rows = feats[i : i + batch_size]
            _write_jsonl_gz(
                os.path.join(tmp, "features", f"batch-{b}.jsonl.gz"),
                [
                    _feature_record(r, model, source, toks[r["feature"]], nbs[r["feature"]], created)
                    for r in rows
                ],
            )
            acts = []
            for r in rows:
                exs = by_feature[r["feature"]]
                n_bands = len({e["kind"] for e in exs if e["kind"] != "top"}) or 1
                for kind in sorted({e["kind"] for e in exs}):
                    of_kind = [e for e in exs if e["kind"] == kind]
                    vals = [e["activation"] for e in of_kind]
                    band = (-1, -1, -1) if kind == "top" else (min(vals), max(vals), 1 / n_bands)
                    acts += [_activation_record(e, model, source, vocab, band, created) for e in of_kind]
            _write_jsonl_gz(os.path.join(tmp, "activations", f"batch-{b}.jsonl.gz"), acts)
    return path
