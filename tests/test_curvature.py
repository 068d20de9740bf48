"""Learnable curvature (issue 16.1): the gradient in c against finite differences of the fixed-c code path, c
kept in bounds, moving towards the best c of a grid search, the bound warning, the optimiser group, the
final c in the saved config, and 2 training steps."""

import itertools
import math

import pytest
import torch
from transformers.testing_utils import CaptureLogger

from modeling_hvit import HViTConfig, HViTModel
from modeling_hvit import curvature as curvature_module
from modeling_hvit.curvature import CurvatureMonitor
from modeling_hvit.distances import pairwise_similarity
from modeling_hvit.hyperbolic import expmap0
from modeling_hvit.lorentz import expmap0 as lorentz_expmap0
from modeling_hvit.losses import PairwiseCrossEntropyLoss, pairwise_cross_entropy

BB = {"model_type": "vit", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 4,
      "intermediate_size": 37, "image_size": 32, "patch_size": 8}


def tiny(**kw) -> HViTModel:
    torch.manual_seed(0)
    return HViTModel(HViTConfig(backbone_config=BB, embedding_dim=8, learn_curvature=True, **kw))


@pytest.mark.parametrize("geometry", ["poincare", "lorentz"])
def test_similarity_gradient_in_c_matches_finite_differences(geometry):
    """The tensor-c path (plain autograd) against central differences of the float-c path (for poincare the
    hand-written-backward closed form: independent code), embeddings held fixed as tangent vectors."""
    z = torch.randn(12, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 0.8
    w = torch.randn(12, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    emb = (lambda c: expmap0(z, c)) if geometry == "poincare" else (lambda c: lorentz_expmap0(2 * z, c))

    def f(c):
        return (pairwise_similarity(emb(c), geometry=geometry, curvature=c) * w).sum()

    c = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    f(c).backward()
    h = 1e-6
    fd = (f(0.3 + h) - f(0.3 - h)) / (2 * h)
    assert abs(float(c.grad) - float(fd)) <= 1e-6 * max(1.0, abs(float(fd)))
    # and the value equals the fixed-c path
    torch.testing.assert_close(pairwise_similarity(emb(c), geometry=geometry, curvature=c).detach(),
                               pairwise_similarity(emb(0.3), geometry=geometry, curvature=0.3))


def _toy(noise: float):
    """Leaves of a depth-4 binary tree as tangent vectors (2 views per leaf). With noisy views the loss prefers
    a small c (near-Euclidean), with exact views a large one (negative curvature spreads the classes apart)."""
    g = torch.Generator().manual_seed(0)
    edges = {}
    leaves = []
    for path in itertools.product("01", repeat=4):
        v = torch.zeros(8)
        for i in range(1, 5):
            v = v + edges.setdefault(path[:i], torch.randn(8, generator=g) * 0.3)
        leaves.append(v)
    z = torch.stack([leaf + noise * torch.randn(8, generator=g) for leaf in leaves for _ in range(2)])
    return z, torch.arange(len(leaves)).repeat_interleave(2)


@pytest.mark.parametrize("noise", [0.3, 0.0])
def test_learnt_c_moves_to_the_best_c_of_a_grid_search_and_stays_in_bounds(noise):
    z, labels = _toy(noise)
    lo, hi = 0.01, 1.0
    grid = torch.logspace(math.log10(lo), math.log10(hi), 41).tolist()
    losses = [float(pairwise_cross_entropy(lorentz_expmap0(2 * z, c), labels, "lorentz", 0.2, c).loss) for c in grid]
    best = grid[min(range(len(grid)), key=losses.__getitem__)]
    model = tiny(geometry="lorentz", curvature=0.1, curvature_min=lo, curvature_max=hi)
    opt = torch.optim.Adam([model.log_curvature], lr=0.05)
    loss_fn = PairwiseCrossEntropyLoss("lorentz")
    seen = []
    for _ in range(150):
        c = model.curvature
        seen.append(float(c.detach()))
        loss = loss_fn(lorentz_expmap0(2 * z, c), labels, curvature=c).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    final = model.learnt_curvature()
    assert all(lo * (1 - 1e-6) <= s <= hi * (1 + 1e-6) for s in seen)
    final_loss = float(pairwise_cross_entropy(lorentz_expmap0(2 * z, final), labels, "lorentz", 0.2, final).loss)
    assert abs(math.log(final / best)) < 0.5 * abs(math.log(0.1 / best)), (final, best)  # moved towards it
    assert final_loss <= min(losses) + 0.02 * (max(losses) - min(losses)), (final_loss, min(losses))
    assert (best < 0.1) == (noise > 0)  # the two toys pull in opposite directions


def test_bound_warning_after_patience_windows():
    model = tiny(curvature=0.5, curvature_min=0.5, curvature_max=2.0)  # starts at its lower bound
    monitor = CurvatureMonitor(patience=3)
    logger = curvature_module.logger
    with CaptureLogger(logger) as cl:
        logs = [monitor.logs(model) for _ in range(2)]
    assert logs[0] == {"curvature": 0.5} and "bound" not in cl.out
    with CaptureLogger(logger) as cl:
        monitor.logs(model)
    assert "sat at its bound 0.5 for 3 logging windows" in cl.out
    with torch.no_grad():
        model.log_curvature.fill_(math.log(1.0))  # back inside: the count restarts
    monitor.logs(model)
    assert monitor.windows_at_bound == 0


def test_config_checks_and_saved_c(tmp_path):
    for kw, msg in [({"geometry": "sphere"}, "learn_curvature needs a hyperbolic geometry"),
                    ({"curvature": 20.0}, r"curvature must lie in \[curvature_min, curvature_max\]"),
                    ({"curvature_min": 0.0}, "curvature_min/curvature_max must satisfy")]:
        with pytest.raises(Exception, match=msg):
            HViTConfig(learn_curvature=True, **kw)
    model = tiny(geometry="poincare").eval()
    with torch.no_grad():
        model.log_curvature.fill_(math.log(0.37))
    x = torch.randn(2, 3, 32, 32)
    out = model(x)
    assert float(out.curvature.detach()) == pytest.approx(0.37)
    model.save_pretrained(tmp_path)
    assert model.config.curvature == pytest.approx(0.37)
    back = HViTModel.from_pretrained(tmp_path).eval()
    assert back.config.curvature == pytest.approx(0.37) and back.log_curvature.requires_grad
    torch.testing.assert_close(back(x).embeddings, out.embeddings, rtol=0, atol=0)
    # the saved c is what a fixed-c model with the same weights computes
    fixed = HViTModel(HViTConfig(backbone_config=BB, embedding_dim=8, curvature=back.config.curvature)).eval()
    fixed.load_state_dict({k: v for k, v in back.state_dict().items() if k != "log_curvature"})
    torch.testing.assert_close(fixed(x).embeddings, out.embeddings, rtol=1e-6, atol=1e-6)
    assert HViTModel.from_pretrained(tmp_path, dtype=torch.bfloat16).log_curvature.dtype == torch.float32


def test_trainer_group_logging_and_two_steps(tmp_path):
    from test_backbones import train_two_steps
    from modeling_hvit.trainer import HViTTrainer, HViTTrainingArguments

    model = tiny(geometry="lorentz").train()
    logged = train_two_steps(model, tmp_path)
    assert float(model.log_curvature.detach()) != pytest.approx(math.log(0.1))  # c trained
    assert all(0.001 <= h["curvature"] <= 10 for h in logged)  # logged every logging step
    assert logged[-1]["curvature"] == pytest.approx(model.learnt_curvature(), rel=1e-5)
    # its own group: the curvature LR, no weight decay; every other trainable parameter decays
    args = HViTTrainingArguments(output_dir=str(tmp_path / "o"), use_cpu=True, report_to="none",
                                 per_device_train_batch_size=4, curvature_learning_rate=0.05)
    trainer = HViTTrainer(model=tiny(geometry="poincare"), args=args)
    opt = trainer.create_optimizer()
    groups = [g for g in opt.param_groups if any(p is trainer.model.log_curvature for p in g["params"])]
    assert len(groups) == 1 and groups[0]["lr"] == 0.05 and groups[0]["weight_decay"] == 0.0
    assert len(groups[0]["params"]) == 1
    n_opt = sum(len(g["params"]) for g in opt.param_groups)
    assert n_opt == sum(p.requires_grad for p in trainer.model.parameters())


def test_resume_check_accepts_a_learnt_c_but_not_changed_bounds(tmp_path):
    """A checkpoint's config.json holds the learnt c (save_pretrained writes it), which differs from the run's
    initial c by design: resuming must not report it as a changed setting; changed bounds still are."""
    import json

    from modeling_hvit.checkpoint import changed_settings
    from modeling_hvit.trainer import HViTTrainer, HViTTrainingArguments

    saved = tiny(geometry="lorentz")
    with torch.no_grad():
        saved.log_curvature.fill_(math.log(0.42))
    saved.save_pretrained(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "trainer_state.json").write_text(json.dumps({"train_batch_size": 4}))
    args = HViTTrainingArguments(output_dir=str(tmp_path / "o"), use_cpu=True, report_to="none",
                                 per_device_train_batch_size=4)
    assert changed_settings(tmp_path / "ckpt", HViTTrainer(model=tiny(geometry="lorentz"), args=args)) == []
    other = HViTTrainer(model=tiny(geometry="lorentz", curvature_max=5.0), args=args)
    assert any("curvature_max" in s for s in changed_settings(tmp_path / "ckpt", other))
    fixed = HViTTrainer(model=HViTModel(HViTConfig(backbone_config=BB, embedding_dim=8, geometry="lorentz")),
                        args=args)
    assert any(s.startswith("learn_curvature") for s in changed_settings(tmp_path / "ckpt", fixed))


def test_train_cli_learns_c_from_the_auto_estimate_and_evaluates_with_the_learnt_c(tmp_path):
    """`--learn_curvature --curvature auto`: the δ estimate is the starting point of the learnt c (it used to start
    from 0.1 whatever the estimate), and the evaluation after training scores with the learnt c."""
    import json

    from modeling_hvit.trainer import make_compute_metrics
    from modeling_hvit.training import main

    main(["--output_dir", str(tmp_path / "run"), "--curvature", "auto", "--learn_curvature", "true",
          "--curvature_learning_rate", "0.01", "--max_steps", "1", "--delta_n", "300", "--delta_draws", "2",
          "--disable_tqdm", "true", "--max_eval_samples", "200"])
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    estimate = (0.144 / cfg["delta_rel"]) ** 2
    assert cfg["learn_curvature"] and abs(math.log(estimate / 0.1)) > 0.1  # the two starting points differ
    assert abs(math.log(cfg["curvature"] / estimate)) < 0.03  # one step of lr 0.01 from the estimate
    model = HViTModel.from_pretrained(tmp_path / "run")
    assert model.learnt_curvature() == pytest.approx(cfg["curvature"], rel=1e-6)
    # compute_metrics reads c when it evaluates, not when it is built
    calls = []
    metrics = make_compute_metrics("lorentz", lambda: calls.append(1) or 0.25, (1,))
    assert not calls
    from transformers import EvalPrediction

    emb = torch.randn(8, 4)
    metrics(EvalPrediction(predictions=(emb.numpy(), emb.numpy()), label_ids=torch.arange(4).repeat(2).numpy()))
    assert calls == [1]


@pytest.fixture(scope="module", params=["poincare", "lorentz"])
def learnt_run(request, tmp_path_factory):
    """train_hvit.py with a learnt c (3 SGD steps, large curvature LR), saved: (folder, geometry, learnt c, 12 test
    images), the learnt c read from the saved weights (exp of log c)."""
    from safetensors.torch import load_file

    from modeling_hvit.data import build_dataset
    from modeling_hvit.training import main

    out = tmp_path_factory.mktemp(f"learnt_{request.param}") / "run"
    main(["--output_dir", str(out), "--geometry", request.param, "--learn_curvature", "true", "--curvature", "0.1",
          "--curvature_learning_rate", "0.5", "--optim", "sgd", "--learning_rate", "0.01", "--max_steps", "3",
          "--image_size", "16", "--embedding_dim", "8", "--global_batch_size", "8", "--max_eval_samples", "16",
          "--recall_ks", "1", "--disable_tqdm", "true", "--report_to", "none"])
    learnt = math.exp(float(load_file(out / "model.safetensors")["log_curvature"]))
    assert abs(math.log(learnt / 0.1)) > 1e-3  # c moved: an initial c left anywhere would be caught
    test = build_dataset("demo")["test"]
    return out, request.param, learnt, [test[i]["image"] for i in range(12)]


def _ball_distances(points: torch.Tensor, c: float):
    """float64 Möbius-form ball distances (test_lorentz.np_ball_dist), self-pairs at inf."""
    import numpy as np

    from test_lorentz import np_ball_dist

    p = points.double().numpy()
    ref = np_ball_dist(p[:, None], p[None], c)
    np.fill_diagonal(ref, np.inf)
    return ref


def test_the_saved_learnt_c_is_what_reload_retrieval_and_the_card_use(learnt_run):
    """config.json, metrics.json, the reloaded model, retrieval on its embeddings and the card all carry the learnt c
    (not the initial 0.1); distances against the float64 ball distance at the learnt c."""
    import json

    import numpy as np

    from modeling_hvit.data.transforms import eval_transform_for, pixel_values_for
    from modeling_hvit.hub_card import build_card
    from modeling_hvit.lorentz import hyperboloid_to_ball, time_component
    from modeling_hvit.retrieval import knn

    out, geometry, learnt, images = learnt_run
    saved = json.loads((out / "config.json").read_text())["curvature"]
    assert saved == pytest.approx(learnt, rel=1e-6)
    assert json.loads((out / "metrics.json").read_text())["curvature"] == pytest.approx(learnt, rel=1e-6)
    model = HViTModel.from_pretrained(out).eval()
    assert model.config.curvature == saved and model.learnt_curvature() == pytest.approx(learnt, rel=1e-6)
    tf = eval_transform_for(model)
    with torch.no_grad():
        emb = model(pixel_values=pixel_values_for(model, torch.stack([tf(im) for im in images]))).embeddings
    # the reloaded model maps onto the manifold of the learnt c (hyperboloid: the ball image lies inside its ball)
    ball = hyperboloid_to_ball(emb.double(), learnt) if geometry == "lorentz" else emb.double()
    assert float((ball.pow(2).sum(-1) * learnt).max()) < 1
    ref = _ball_distances(ball, learnt)
    sim, idx = knn(emb, k=3, geometry=model.config.geometry, curvature=model.config.curvature, exact=True)
    np.testing.assert_allclose(-sim.double().numpy(), np.sort(ref, 1)[:, :3], rtol=1e-5, atol=1e-6)
    stale = _ball_distances(hyperboloid_to_ball(emb.double(), 0.1) if geometry == "lorentz" else ball, 0.1)
    near = np.sort(ref, 1)[:, :3]  # c = 0.1 scores differently, by far more than the tolerance above
    assert (np.abs(np.sort(stale, 1)[:, :3] - near) / near).max() > 1e-4
    card = str(build_card(out))
    assert f"c = {saved}" in card and "c = 0.1 " not in card and "c = 0.1)" not in card
    if geometry == "lorentz":
        torch.testing.assert_close(time_component(emb.double(), learnt) ** 2 - emb.double().pow(2).sum(-1),
                                   torch.full((len(emb),), 1 / learnt, dtype=torch.float64))


def test_the_search_embedder_uses_the_learnt_c(learnt_run):
    """`hvit index` / `semantic_search` on a model with a learnt c: the embedder's curvature and the distances it
    ranks by are the learnt c's."""
    from modeling_hvit.search.embedder import Embedder
    from modeling_hvit.search.query import semantic_search

    out, geometry, learnt, images = learnt_run
    embedder = Embedder.from_model(out)  # its own load, preprocessing and (Lorentz) ball conversion
    assert embedder.geometry == "poincare" and embedder.curvature == pytest.approx(learnt, rel=1e-6)
    ball = embedder.embed_images(images)
    ref = _ball_distances(ball, learnt)
    hits = semantic_search(ball[:4], ball, top_k=2, geometry=embedder.geometry, curvature=embedder.curvature)
    for q, row in enumerate(hits):  # the query itself at distance 0, then its nearest neighbour
        nearest = int(ref[q].argmin())
        assert [h["corpus_id"] for h in row] == [q, nearest]
        assert row[1]["distance"] == pytest.approx(float(ref[q, nearest]), rel=1e-5)
