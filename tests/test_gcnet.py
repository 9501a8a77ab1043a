"""GCNet: contract, conversations from ids and the fallbacks, whole-conversation batches, graphs, isolation."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from msabench.masks import full_mask
from msabench.method import FitContext
from msabench.methods.gcnet import (
    GCNet,
    GCNetModel,
    GraphConv,
    RelationalGraphConv,
    conversation_batches,
    conversation_layout,
    has_conversations,
    resolve_mode,
    window_relations,
)
from msabench.plugins import PROTOCOLS
from msabench.testing import check_method, tiny_datasets
from msabench.training import Batch


def test_check_method_single_and_pseudo() -> None:
    check_method(GCNet, quick_params={"hidden": 8, "epochs": 2})
    check_method(GCNet, quick_params={"hidden": 8, "epochs": 2, "conversation": "pseudo", "pseudo_size": 5},
                 tasks=["regression"])


def test_layout_from_video_segment_ids() -> None:
    ids = ["vidA_10", "vidA_2", "vid_B_1", "vidA_1", "vid_B_3", "odd-id", "x$_$7"]
    assert not has_conversations(ids)  # auto needs every id to parse
    assert has_conversations([i for i in ids if i != "odd-id"]) and resolve_mode(ids[:2] + ids[2:3], "auto") == "ids"
    conv, pos, speaker = conversation_layout(ids, "ids")
    # videos in order of first appearance: vidA 0, vid_B 1, odd-id 2 (alone), x 3; positions by segment number
    assert conv.tolist() == [0, 0, 1, 0, 1, 2, 3]
    assert pos.tolist() == [2, 1, 0, 0, 1, 0, 0]
    assert speaker.tolist() == conv.tolist()


def test_fallbacks_without_conversation_structure() -> None:
    ids = [f"synthetic-mosi_{i:05d}" for i in range(7)]
    assert not has_conversations(ids) and resolve_mode(ids, "auto") == "single"
    conv, pos, speaker = conversation_layout(ids, "single")
    assert conv.tolist() == list(range(7)) and pos.tolist() == [0] * 7 and speaker.tolist() == list(range(7))
    conv, pos, speaker = conversation_layout(ids, "pseudo", pseudo_size=3)
    assert conv.tolist() == [0, 0, 0, 1, 1, 1, 2] and pos.tolist() == [0, 1, 2, 0, 1, 2, 0]
    assert speaker.tolist() == list(range(7))
    with pytest.raises(ValueError):
        resolve_mode(ids, "nonsense")


def test_batches_hold_whole_conversations_in_order() -> None:
    rng = np.random.default_rng(0)
    sizes = rng.integers(1, 9, size=15)
    ids = [f"v{c}_{s}" for c, n in enumerate(sizes) for s in rng.permutation(n) + 1]
    conv, pos, _ = conversation_layout(ids, "ids")
    order = torch.randperm(15, generator=torch.Generator().manual_seed(1))
    batches = conversation_batches(conv, pos, batch_size=10, order=order)
    everything = torch.cat(batches).tolist()
    assert sorted(everything) == list(range(len(ids)))
    seen_convs: list[int] = []
    for b in batches:
        convs = conv[b].tolist()
        for c in set(convs):
            members = [i for i, cc in enumerate(conv.tolist()) if cc == c]
            assert sorted(b[conv[b] == c].tolist()) == sorted(members)  # whole conversation in this batch
            assert pos[b[conv[b] == c]].tolist() == sorted(pos[members].tolist())  # ordered by position
        seen_convs += list(dict.fromkeys(convs))
    assert seen_convs == order.tolist()  # conversations come in the shuffled order


def test_window_relations_by_hand() -> None:
    valid = torch.tensor([[True, True, True, True, False]])
    speaker = torch.tensor([[0, 1, 0, 0, -1]])
    rel = window_relations(valid, speaker, window=2)
    past = np.zeros((4 + 1, 5), dtype=bool)
    for i in range(4):
        for j in range(4):
            past[i, j] = 0 < i - j <= 2
    assert np.array_equal(rel["past"][0].numpy(), past)
    assert np.array_equal(rel["future"][0].numpy(), past.T)
    near = past | past.T
    spk = np.array([0, 1, 0, 0, -1])
    assert np.array_equal(rel["same"][0].numpy(), near & (spk[:, None] == spk[None, :]))
    assert np.array_equal(rel["other"][0].numpy(), near & (spk[:, None] != spk[None, :]))


def test_relational_graph_conv_against_a_loop() -> None:
    torch.manual_seed(0)
    layer = RelationalGraphConv(3, 2, n_relations=2)
    h = torch.randn(2, 4, 3)
    adj = [torch.rand(2, 4, 4) > 0.5, torch.rand(2, 4, 4) > 0.6]
    out = layer(h, adj).detach().numpy()
    w0, b0 = layer.root.weight.detach().numpy(), layer.root.bias.detach().numpy()
    wr = layer.rel.detach().numpy()
    hn = h.numpy()
    for c in range(2):
        for i in range(4):
            expected = hn[c, i] @ w0.T + b0
            for r in range(2):
                nbrs = [j for j in range(4) if adj[r][c, i, j]]
                if nbrs:
                    expected = expected + np.mean([hn[c, j] @ wr[r] for j in nbrs], axis=0)
            assert np.allclose(out[c, i], expected, atol=1e-5)
    gc = GraphConv(3, 2)
    out = gc(h, adj[0]).detach().numpy()
    for c in range(2):
        for i in range(4):
            nbrs = [j for j in range(4) if adj[0][c, i, j]]
            agg = np.mean(hn[c, nbrs], axis=0) if nbrs else np.zeros(3)
            expected = gc.root(h[c, i]).detach().numpy() + agg @ gc.neigh.weight.detach().numpy().T
            assert np.allclose(out[c, i], expected, atol=1e-5)


def _batch(n: int, g: torch.Generator) -> Batch:
    dims = {"l": 4, "a": 3, "v": 2}
    feats = {m: torch.randn(n, 2, d, generator=g) for m, d in dims.items()}
    mask = {m: torch.ones(n, 2, dtype=torch.bool) for m in dims}
    mask["a"][2] = False
    feats["a"][2] = 0.0
    return Batch(feats, mask, {m: torch.full((n,), 2) for m in dims}, torch.randn(n, generator=g), torch.arange(n))


def test_predictions_mix_within_a_conversation_only() -> None:
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = GCNetModel({"l": 4, "a": 3, "v": 2}, hidden=8, window=2, dropout=0.0, n_out=1).eval()
    batch = _batch(7, g)
    ids = ["a_1", "a_2", "a_3", "b_1", "b_2", "b_3", "b_4"]
    changed = replace(batch, features={**batch.features, "l": batch.features["l"].clone()})
    changed.features["l"][1] += 5.0  # an utterance of conversation a
    for mode, touched in (("ids", {0, 1, 2}), ("single", {1})):
        conv, pos, spk = conversation_layout(ids, mode)
        with torch.no_grad():
            before = model(batch, conv, pos, spk)["pred"]
            after = model(changed, conv, pos, spk)["pred"]
        moved = set(torch.nonzero(~torch.isclose(before, after, atol=1e-7)).flatten().tolist())
        assert moved == touched, mode


def test_reconstruction_loss_counts_present_modalities_only() -> None:
    model = GCNetModel({"l": 4, "a": 3, "v": 2}, hidden=8, window=2, dropout=0.0, n_out=1)
    rec, target = torch.randn(3, 9), torch.randn(3, 9)
    present = torch.tensor([[True, True, True], [True, False, True], [False, False, True]])  # order a, l, v
    cols = np.array([0] * 3 + [1] * 4 + [2] * 2)  # sorted modalities a (3), l (4), v (2)
    w = present.numpy()[:, cols]
    expected = (((rec - target).numpy() ** 2) * w).sum() / w.sum()
    out = {"reconstruction": rec, "target": target, "present": present}
    assert float(model.reconstruction_loss(out)) == pytest.approx(expected, rel=1e-6)


def test_fit_records_the_conversation_mode() -> None:
    data = tiny_datasets()["regression"]
    proto = PROTOCOLS.get("random-missing")()
    context = FitContext(task=data.task, seed=1, valid_masks=proto.masks(data.valid, data.fingerprint, ["0.5"]))

    def fit(dataset, **params):
        method = GCNet(hidden=8, epochs=1, patience=0, **params)
        return method.fit(dataset.train, dataset.valid,
                          proto.training_schedule(dataset.train, 1, dataset.fingerprint), context)

    assert fit(data).conversation_mode_ == "single"
    videos = {name: replace(s, ids=[f"{name}{i // 4}_{i % 4 + 1}" for i in range(len(s))])
              for name, s in data.splits.items()}
    method = fit(replace(data, splits=videos))
    assert method.conversation_mode_ == "ids"
    test = videos["test"]
    pred = method.predict(test, full_mask(test))
    assert pred.shape == (len(test),) and np.isfinite(pred).all()
