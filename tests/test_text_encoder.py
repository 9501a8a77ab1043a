"""The pretrained text encoder (msabench.text_encoder) with a tiny random BERT saved to a temporary directory."""
from __future__ import annotations

import hashlib
import pickle

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

from msabench import text_encoder as te  # noqa: E402
from msabench.data.mmsa import MMSAPickle  # noqa: E402
from msabench.data.synthetic import SMALL, SyntheticSmall, make_sentiment  # noqa: E402
from msabench.hardware import hardware_info  # noqa: E402
from msabench.method import FitContext  # noqa: E402
from msabench.plugins import METHODS, PROTOCOLS  # noqa: E402
from msabench.testing import TINY, check_method  # noqa: E402

HIDDEN = 16


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("tiny-bert")
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=160, hidden_size=HIDDEN, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=32, max_position_embeddings=64)
    transformers.BertModel(cfg).save_pretrained(path)
    return str(path)


def tokens_set(shape=TINY, seed=7):
    return make_sentiment("tok", shape, seed=seed, tokens=True)


def started(method, dataset, seed=5):
    """A method after _begin_fit (encoder loaded) on ``dataset``'s train split."""
    method._begin_fit(dataset.train, FitContext(task=dataset.task, seed=seed))
    return method


def fit(method, dataset, seed=5):
    proto = PROTOCOLS.get("random-missing")()
    ctx = FitContext(task=dataset.task, seed=seed, valid_masks=proto.masks(dataset.valid, dataset.fingerprint, ["0.3"]))
    return method.fit(dataset.train, dataset.valid, proto.training_schedule(dataset.train, seed, dataset.fingerprint),
                      ctx)


# loading --------------------------------------------------------------------------------------------------------
def test_load_by_path_records_identity(tiny_bert):
    model, ident = te.load_pretrained(tiny_bert)
    saved = transformers.BertModel.from_pretrained(tiny_bert)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), saved.state_dict().values()))
    h = hashlib.sha256()  # the weights hash, computed independently
    for key, value in sorted(saved.state_dict().items()):
        h.update(f"{key}|{tuple(value.shape)}|{value.dtype}".encode())
        h.update(value.contiguous().view(torch.uint8).numpy().tobytes())
    assert ident == f"{tiny_bert}@-#{h.hexdigest()[:16]}"
    params = te.finalize_params({"lr": 1e-3, "text_encoder": tiny_bert, "text_finetune": True, "text_lr": 5e-5,
                                 "text_encoder_id": ""})
    assert params["text_encoder_id"] == ident
    default = {"lr": 1e-3, "text_encoder": "features", "text_finetune": True, "text_lr": 5e-5, "text_encoder_id": ""}
    assert te.finalize_params(default) == {"lr": 1e-3}


def test_missing_model_one_line_error(tmp_path, monkeypatch):
    missing = tmp_path / "no-such-model"
    with pytest.raises(te.TextEncoderError) as err:
        te.load_pretrained(str(missing))
    msg = str(err.value)
    assert "\n" not in msg and str(missing) in msg and "HF_HOME" in msg and "HF_HUB_OFFLINE" in msg
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(te.TextEncoderError) as err:
        te.resolve_location("some-org-that-is-not-cached/model")
    msg = str(err.value)
    assert "\n" not in msg and "some-org-that-is-not-cached/model" in msg and "HF_HUB_OFFLINE=1" in msg


def test_features_dataset_refused(tiny_bert):
    ds = make_sentiment("plain", TINY, seed=7)
    with pytest.raises(te.TextEncoderError, match="text=bert"):
        started(METHODS.get("late-fusion")(text_encoder=tiny_bert), ds)


# what reaches the encoder -------------------------------------------------------------------------------------------
def test_unk_exactly_at_dropped_tokens(tiny_bert):
    ds = tokens_set()
    method = started(METHODS.get("late-fusion")(text_encoder=tiny_bert, text_finetune=False), ds)
    seen = []
    enc = method.text_encoder_module_
    enc.model.register_forward_pre_hook(lambda mod, args, kw: seen.append(kw["input_ids"].clone()), with_kwargs=True)
    split = ds.test
    gen = torch.Generator().manual_seed(3)
    pad = split.padding_mask()
    mask = {m: x & (torch.rand(x.shape, generator=gen) > 0.5) for m, x in pad.items()}
    mask["l"][:3] = False  # three samples without text at all
    batch = method.prepare(split).masked_batch(mask, slice(0, len(split)))
    ids = split.text_bert[:, 0].numpy()
    attn = split.text_bert[:, 1].numpy().astype(bool)
    keep = mask["l"].numpy()
    expected = np.where(~keep & attn & (ids != 101) & (ids != 102), 100, ids)
    rows = np.flatnonzero(keep.any(axis=1))
    # on CPU: rows sorted by length (stable), chunks of CPU_CHUNK, each trimmed to its longest
    rows = rows[np.argsort(attn[rows].sum(axis=1), kind="stable")]
    chunks = [rows[i:i + te.CPU_CHUNK] for i in range(0, len(rows), te.CPU_CHUNK)]
    assert len(seen) == len(chunks) > 1
    for got, chunk in zip(seen, chunks):
        np.testing.assert_array_equal(got.numpy(), expected[chunk, :attn[chunk].sum(axis=1).max()])
    states = batch.features["l"]
    assert states.shape == (len(split), ids.shape[1], HIDDEN)
    assert torch.all(states[:3] == 0) and torch.all(states[torch.as_tensor(~attn)] == 0)
    # a frozen encoder does not encode the same ids twice
    calls = len(seen)
    method.prepare(split).masked_batch(mask, slice(0, len(split)))
    assert len(seen) == calls
    again = method.prepare(split).masked_batch(mask, slice(0, len(split))).features["l"]
    assert torch.equal(again, states)


@pytest.mark.parametrize("finetune", [True, False])
def test_gradients_reach_the_encoder_only_when_fine_tuning(tiny_bert, finetune):
    ds = tokens_set()
    pristine, _ = te.load_pretrained(tiny_bert)
    method = fit(METHODS.get("late-fusion")(text_encoder=tiny_bert, text_finetune=finetune, epochs=1,
                                            text_lr=1e-2), ds)
    enc = method.text_encoder_module_
    changed = any(not torch.equal(a, b) for a, b in zip(enc.model.state_dict().values(),
                                                         pristine.state_dict().values()))
    assert changed == finetune
    assert all(p.requires_grad == finetune for p in enc.model.parameters())
    in_model = {id(p) for p in method.model_.parameters()}
    assert all((id(p) in in_model) == finetune for p in enc.model.parameters())
    if not finetune:
        assert all(p.grad is None for p in enc.model.parameters())
    # one backward pass: gradients on the encoder iff fine-tuning
    batch = method.prepare(ds.train).masked_batch(ds.train.padding_mask(), slice(0, 8))
    method.model_.train()
    method.model_(batch).sum().backward()
    grads = [p.grad is not None and bool(p.grad.abs().sum() > 0) for p in enc.model.parameters() if p.requires_grad]
    assert (any(grads) if finetune else grads == [])


def test_fine_tuned_encoder_encodes_unchanged_text_once_per_weights(tiny_bert):
    ds = tokens_set()
    method = fit(METHODS.get("late-fusion")(text_encoder=tiny_bert, text_finetune=True, epochs=2), ds)
    enc, split = method.text_encoder_module_, ds.test
    full = split.padding_mask()
    no_audio = {**full, "a": torch.zeros_like(full["a"])}
    before = enc.encoded_rows
    first = method.predict(split, full)
    assert enc.encoded_rows - before == len(split)
    second = method.predict(split, no_audio)  # same text: nothing encoded again
    assert enc.encoded_rows - before == len(split)
    method.model_.load_state_dict(method.model_.state_dict())  # a restored state clears the cache
    np.testing.assert_array_equal(method.predict(split, full), first)
    assert enc.encoded_rows - before == 2 * len(split)
    assert second.shape == first.shape


@pytest.mark.parametrize("name", ["late-fusion", "self-mm"])
def test_text_lr_only_on_the_encoder_group(tiny_bert, name):
    ds = tokens_set()
    method = started(METHODS.get(name)(text_encoder=tiny_bert, text_lr=3e-5, lr=2e-3), ds)
    method.model_ = method.build(ds.train.dims(), ds.train.seq_lens(), ds.task)
    params = [p for p in method.model_.parameters() if p.requires_grad]
    opt = te.make_optimizer(method, params)
    enc_ids = {id(p) for p in method.text_encoder_module_.model.parameters()}
    enc_groups = [g for g in opt.param_groups if any(id(p) in enc_ids for p in g["params"])]
    assert len(enc_groups) == 1 and enc_groups[0]["lr"] == 3e-5
    assert {id(p) for p in enc_groups[0]["params"]} == enc_ids
    others = [g for g in opt.param_groups if g is not enc_groups[0]]
    assert others and all(g["lr"] != 3e-5 for g in others)
    assert sum(len(g["params"]) for g in others) == len(params) - len(enc_ids)
    assert method.model_.encoders["l"][0].in_features == HIDDEN if name == "late-fusion" else True


# the default is unchanged ---------------------------------------------------------------------------------------
# sha256 (16 hex) of float32 test predictions, computed with the code before the text encoder existed (f459f79^),
# one set per CPU kernel family (vendor, torch's CPU capability): float results depend on the kernels MKL/oneDNN
# choose for the CPU, so one family's hashes cannot judge another's. Intel AVX512: recomputed with f459f79^ on such a
# machine (the code of this test gave the same hashes there).
REFERENCE = {
    ("AuthenticAMD", "AVX2"): {("late-fusion", "0.0"): "4c18216401b1884c", ("late-fusion", "0.5"): "bf7b1e984432071f",
                               ("self-mm", "0.0"): "627066b5ce8a336a", ("self-mm", "0.5"): "40880b7e6810e778",
                               "smil": "45ec435d6dcb7351"},
    ("GenuineIntel", "AVX512"): {("late-fusion", "0.0"): "4c7de91791b422b1", ("late-fusion", "0.5"): "49ee1e2f87050ba5",
                                 ("self-mm", "0.0"): "79d70aba5282b28b", ("self-mm", "0.5"): "d3d702aedcadc9ac",
                                 "smil": "d72009586a7e184c"},
}


def test_features_default_unchanged_bit_for_bit():
    info = hardware_info("cpu")
    family = (info.get("cpu_vendor"), info.get("cpu_capability"))
    if family not in REFERENCE:
        pytest.skip(f"no reference predictions recorded for CPU family {family}; known: {sorted(REFERENCE)}")
    reference = REFERENCE[family]
    torch.set_num_threads(1)
    ds = SyntheticSmall().load()
    proto = PROTOCOLS.get("random-missing")()
    for name in ("late-fusion", "self-mm"):
        m = METHODS.get(name)(epochs=2)
        ctx = FitContext(task=ds.task, seed=1111, valid_masks=proto.masks(ds.valid, ds.fingerprint, ["0.3"]))
        m.fit(ds.train, ds.valid, proto.training_schedule(ds.train, 1111, ds.fingerprint), ctx)
        for cond in ("0.0", "0.5"):
            p = m.predict(ds.test, proto.mask(ds.test, cond, ds.fingerprint)).astype(np.float32)
            assert hashlib.sha256(p.tobytes()).hexdigest()[:16] == reference[(name, cond)]
    smil = METHODS.get("smil")(epochs=1)
    ctx = FitContext(task=ds.task, seed=1111, valid_masks=proto.masks(ds.valid, ds.fingerprint, ["0.3"]))
    smil.fit(ds.train, ds.valid, proto.training_schedule(ds.train, 1111, ds.fingerprint), ctx)
    p = smil.predict(ds.test, proto.mask(ds.test, "0.5", ds.fingerprint)).astype(np.float32)
    assert hashlib.sha256(p.tobytes()).hexdigest()[:16] == reference["smil"]


def test_stored_run_keeps_its_key():
    """The published run results/synthetic-mosi/runs/4323bfa04438ca69 (late fusion, seed 1111) plans to the same
    key and parameter hash, so stores skip it and leaderboards pool it with new default runs."""
    from msabench.data.synthetic import SyntheticMOSI
    from msabench.params import params_hash
    from msabench.runner import RunSpec, resolve_method_params

    ds = SyntheticMOSI().load()
    _, params = resolve_method_params("late-fusion", ds, {}, 6)
    spec = RunSpec("late-fusion", params, "synthetic-mosi", {}, ds.fingerprint, "modality-missing",
                   {"mask_seed": 0, "train_recipe": "default"}, 1111, 6)
    assert params_hash(params) == "0e0012bfcc25"
    assert spec.key == "4323bfa04438ca69"


# data -----------------------------------------------------------------------------------------------------------
def test_synthetic_tokens_carry_sentiment_and_leave_features():
    plain, tok = make_sentiment("x", SMALL, seed=3), make_sentiment("x", SMALL, seed=3, tokens=True)
    for m in "lav":
        assert torch.equal(plain.train.features[m], tok.train.features[m])
    bert = tok.train.text_bert.numpy()
    assert bert.shape == (len(tok.train), 3, SMALL.seq_lens["l"])
    np.testing.assert_array_equal(bert[:, 1].sum(axis=1), tok.train.lengths["l"].numpy())
    ids = bert[:, 0]
    polarity = ((ids >= 110) & (ids < 120)).sum(axis=1) - ((ids >= 120) & (ids < 130)).sum(axis=1)
    assert np.corrcoef(polarity, tok.train.labels.numpy())[0, 1] > 0.4
    assert SyntheticSmall(text="bert").load().train.text_bert is not None


def test_mmsa_tokenizes_raw_text_on_load(tmp_path, tiny_bert):
    vocab = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "bad",
                                                                "film"]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok_dir = tmp_path / "tok"
    if "vocab" in __import__("inspect").signature(transformers.BertTokenizer.__init__).parameters:  # transformers 5
        tokenizer = transformers.BertTokenizer(vocab={w: i for i, w in enumerate(vocab)})
    else:
        tokenizer = transformers.BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt"))
    tokenizer.save_pretrained(tok_dir)
    (tok_dir / "config.json").write_text((__import__("pathlib").Path(tiny_bert) / "config.json").read_text())
    rng = np.random.default_rng(0)
    texts = ["good film", "bad", "good bad zebra film film"]
    split = {"text": rng.normal(size=(3, 6, 4)).astype(np.float32), "audio": np.ones((3, 2, 2), np.float32),
             "vision": np.ones((3, 2, 2), np.float32), "regression_labels": np.array([1.0, -1.0, 0.0], np.float32),
             "id": ["a", "b", "c"], "raw_text": texts}
    path = tmp_path / "d.pkl"
    path.write_bytes(pickle.dumps({"train": split, "valid": split, "test": split}))
    ds = MMSAPickle(str(path), text="bert", tokenizer=str(tok_dir)).load()
    expected = np.array([[101, 104, 106, 102, 0, 0], [101, 105, 102, 0, 0, 0], [101, 104, 105, 100, 106, 102]])
    np.testing.assert_array_equal(ds.train.text_bert[:, 0].numpy(), expected)
    np.testing.assert_array_equal(ds.train.lengths["l"].numpy(), [4, 3, 6])
    with pytest.raises(Exception, match="max_length"):
        MMSAPickle(str(path), text="bert", tokenizer=str(tok_dir), max_length=4).load()


# every built-in method runs with the encoder ------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(METHODS.names()))
def test_check_method_with_tiny_encoder(tiny_bert, name):
    torch.set_num_threads(1)
    cls = METHODS.get(name)
    from msabench.training import TorchMethod

    if not issubclass(cls, TorchMethod):
        pytest.skip(f"{name} is not a TorchMethod")
    check_method(cls, {"text_encoder": tiny_bert, "text_finetune": True, "batch_size": 16})


# teacher/student methods: each stage fine-tunes its own encoder ---------------------------------------------------
def _fit_capturing_teacher(name, ds, monkeypatch, cache_dir=None, **params):
    """Fit ``name`` with a fine-tuned tiny encoder; return (method, teacher) (the teacher as frozen)."""
    from msabench.methods import _distill

    seen = {}
    freeze = _distill.freeze

    def capture(teacher):
        seen["teacher"] = teacher
        return freeze(teacher)

    monkeypatch.setattr(_distill, "freeze", capture)
    proto = PROTOCOLS.get("modality-missing")()
    ctx = FitContext(task=ds.task, seed=5, valid_masks=proto.masks(ds.valid, ds.fingerprint, ["{l,a,v}"]),
                     dataset_fingerprint=ds.fingerprint, cache_dir=None if cache_dir is None else str(cache_dir))
    method = METHODS.get(name)(**{"text_finetune": True, "epochs": 2, "text_lr": 1e-2, "batch_size": 16, **params})
    method.fit(ds.train, ds.valid, proto.training_schedule(ds.train, 5, ds.fingerprint), ctx)
    return method, seen["teacher"]


def _differs(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return any(not torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.parametrize("name", ["corrkd", "hrlf", "mmin"])
def test_student_fine_tunes_its_own_encoder(tiny_bert, name, monkeypatch):
    from msabench.methods._distill import text_encoder_of

    torch.set_num_threads(1)
    ds = tokens_set()
    pristine, _ = te.load_pretrained(tiny_bert)
    method, teacher = _fit_capturing_teacher(name, ds, monkeypatch, text_encoder=tiny_bert)
    t_enc, s_enc = text_encoder_of(teacher), method.text_encoder_module_
    assert t_enc is not None and s_enc is not t_enc
    assert text_encoder_of(method.model_) is s_enc  # registered (saved, restored) with the student
    assert all(p.requires_grad for p in s_enc.model.parameters())
    assert not any(p.requires_grad for p in t_enc.model.parameters())  # the teacher stays frozen
    assert _differs(t_enc.model, pristine)  # the teacher fine-tuned its copy
    assert _differs(s_enc.model, pristine) and _differs(s_enc.model, t_enc.model)  # and the student its own


def test_teacher_outputs_come_from_the_teachers_encoder(tiny_bert, monkeypatch):
    from msabench.methods import _distill

    torch.set_num_threads(1)
    ds = tokens_set()
    method, teacher = _fit_capturing_teacher("corrkd", ds, monkeypatch, text_encoder=tiny_bert)
    got = _distill.teacher_outputs(method, teacher, ds.train, ("logits",))["logits"]
    full = ds.train.padding_mask()
    everything = torch.arange(len(ds.train))

    def manual(encoder):
        prepared = method.prepare(ds.train)
        prepared.encode = encoder.encode_batch
        with torch.no_grad():
            return teacher(prepared.masked_batch(full, everything))["logits"]

    torch.testing.assert_close(got, manual(_distill.text_encoder_of(teacher)))
    assert not torch.allclose(got, manual(method.text_encoder_module_))  # the student's encoder gives other values


def test_cached_fine_tuned_teacher_gives_the_same_student(tiny_bert, monkeypatch, tmp_path):
    from msabench.methods._distill import teacher_cache_path

    torch.set_num_threads(1)
    ds = tokens_set()
    first, _ = _fit_capturing_teacher("corrkd", ds, monkeypatch, cache_dir=tmp_path, text_encoder=tiny_bert)
    again, _ = _fit_capturing_teacher("corrkd", ds, monkeypatch, cache_dir=tmp_path, text_encoder=tiny_bert)
    assert first.teacher_source_ == "trained" and again.teacher_source_.startswith("cache:")
    full = ds.test.padding_mask()
    np.testing.assert_array_equal(again.predict(ds.test, full), first.predict(ds.test, full))
    # a frozen-encoder or features teacher never answers for a fine-tuned one
    ctx = FitContext(task=ds.task, seed=5, dataset_fingerprint=ds.fingerprint, cache_dir=str(tmp_path))
    from msabench.methods.corrkd import TEACHER_PARAMS

    paths = set()
    for params in ({"text_encoder": tiny_bert, "text_finetune": True}, {"text_encoder": tiny_bert,
                   "text_finetune": False}, {}):
        m = started(METHODS.get("corrkd")(**params), ds)
        paths.add(teacher_cache_path(m, ctx, TEACHER_PARAMS))
    assert len(paths) == 3
