"""Black-box attacks (issue 13): query accounting, Square, NATTACK, one-pixel, HopSkipJump.

Budgets are small (digits, 8x8): the property suite checks the contract, the strength tests check
real behaviour on the digits model, and a counting module checks that ``AttackResult.queries`` is
exactly the number of model evaluations each sample cost.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import robustlab as rl
from robustlab.attacks import NATTACK, PGD, HopSkipJump, OnePixel, Square
from robustlab.attacks.onepixel import apply_pixels
from robustlab.attacks.queries import LabelOracle, ScoreOracle
from robustlab.attacks.square import pseudo_gaussian, square_p
from robustlab.testing import CountingModel, check_attack


class Binarized(nn.Module):
    """Input binarisation (rounding) in front of a model: the gradient is zero almost everywhere."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(torch.round(x))


def _tm(norm: str, eps: float) -> rl.ThreatModel:
    return rl.ThreatModel(norm, eps)


# -- the oracles ----------------------------------------------------------------------------------
def test_score_oracle_counts_rows_per_sample_and_blocks_gradients(model, batch):
    x, _ = batch
    oracle = ScoreOracle(model, 4, x.device, budget=5)
    xs = x[:6].clone().requires_grad_(True)
    idx = torch.tensor([0, 0, 2, 3, 3, 3])
    scores = oracle(xs, idx)
    assert not scores.requires_grad and scores.grad_fn is None
    assert oracle.counts.tolist() == [2, 0, 1, 3]
    assert oracle.remaining().tolist() == [3, 5, 4, 2]
    probs = ScoreOracle(model, 1, x.device, output="probs")(x[:1], torch.tensor([0]))
    assert torch.allclose(probs.sum(1), torch.ones(1))


def test_score_oracle_refuses_to_exceed_the_budget_before_querying(model, batch):
    x, _ = batch
    counting = CountingModel(model)
    oracle = ScoreOracle(counting, 2, x.device, budget=2)
    oracle(x[:2], torch.tensor([0, 0]))
    with pytest.raises(RuntimeError, match="budget"):
        oracle(x[:1], torch.tensor([0]))
    assert counting.rows == 2 and oracle.counts.tolist() == [2, 0]


def test_label_oracle_returns_labels_only(model, batch):
    x, y = batch
    oracle = LabelOracle(model, x.shape[0], x.device)
    labels = oracle(x, torch.arange(x.shape[0]))
    assert labels.dtype == torch.long and labels.shape == y.shape
    assert torch.equal(oracle.is_adversarial(x, torch.arange(x.shape[0]), y), labels != y)
    assert int(oracle.counts.sum()) == 2 * x.shape[0]


# -- Square ---------------------------------------------------------------------------------------
def test_square_p_schedule_halves_at_the_paper_iterations():
    assert square_p(0, 10000, 0.8) == 0.8 and square_p(10, 10000, 0.8) == 0.8
    assert square_p(11, 10000, 0.8) == 0.4 and square_p(50, 10000, 0.8) == 0.4
    assert square_p(201, 10000, 0.8) == 0.8 / 8
    assert square_p(9000, 10000, 0.8) == 0.8 / 512
    # rescaled to the budget: iteration 100 of 1000 is iteration 1000 of 10000
    assert square_p(100, 1000, 0.8) == square_p(1000, 10000, 0.8) == 0.8 / 16


def test_square_absolute_schedule_keeps_the_halving_iterations_whatever_the_budget():
    """AutoAttack's ``standard`` (resc_schedule=False): thresholds at fixed iterations."""
    for total in (1000, 5000, 10000):
        assert square_p(10, total, 0.8, "absolute") == 0.8 and square_p(11, total, 0.8, "absolute") == 0.4
        assert square_p(100, total, 0.8, "absolute") == 0.8 / 4
    assert square_p(999, 1000, 0.8, "absolute") == 0.8 / 16  # a 1,000-query run ends at p_init / 16
    assert square_p(999, 1000, 0.8, "rescaled") == 0.8 / 512  # the rescaled one at p_init / 512
    assert square_p(4999, 5000, 0.8, "absolute") == 0.8 / 128  # AutoAttack's 5,000 queries
    assert all(square_p(i, 10000, 0.8, "absolute") == square_p(i, 10000, 0.8) for i in range(0, 10000, 7))
    with pytest.raises(ValueError, match="schedule"):
        square_p(5, 100, 0.8, "linear")
    with pytest.raises(ValueError, match="schedule"):
        Square(_tm("linf", 0.3), schedule="autoattack")


@pytest.mark.parametrize("norm,eps", [("linf", 0.3), ("l2", 2.0)])
def test_square_absolute_schedule_property_suite(model, batch, norm, eps):
    x, y = batch
    res = check_attack(lambda s: Square(_tm(norm, eps), queries=50, schedule="absolute", seed=s), model, x, y)
    rescaled = Square(_tm(norm, eps), queries=50, seed=0).attack(model, x, y)
    assert not torch.equal(res.x_adv, rescaled.x_adv)  # 50 queries: rescaled, p drops from the 2nd iteration


@pytest.mark.parametrize("s", [1, 2, 3, 5, 7])
def test_pseudo_gaussian_pattern_has_unit_norm_and_opposite_halves(s):
    eta = pseudo_gaussian(s, dtype=torch.float64, device=torch.device("cpu"))
    assert eta.shape == (s, s)
    assert torch.isclose(eta.norm(), torch.tensor(1.0, dtype=torch.float64))
    assert bool((eta[: s // 2] > 0).all()) and bool((eta[s // 2 :] < 0).all())


@pytest.mark.parametrize("norm,eps", [("linf", 0.3), ("l2", 2.0)])
def test_square_property_suite(model, batch, norm, eps):
    model.train()
    check_attack(lambda s: Square(_tm(norm, eps), queries=40, seed=s), model, *batch)
    model.eval()


def test_square_targeted_property_suite(model, batch):
    x, y = batch
    target = (y + 1) % 10
    res = check_attack(lambda s: Square(_tm("linf", 0.3), queries=30, seed=s), model, x, y, target=target)
    assert bool((res.success <= (rl.attacks.predict(model, res.x_adv).argmax(1) == target)).all())


@pytest.mark.parametrize("norm,eps", [("linf", 0.3), ("l2", 2.0)])
def test_square_query_counts_are_exact(model, batch, norm, eps):
    x, y = batch
    counting = CountingModel(model)
    budget = 25
    res = Square(_tm(norm, eps), queries=budget, seed=1).attack(counting, x, y)
    n = x.shape[0]
    # the harness evaluates the clean batch and the final x_adv once each; the rest are the attack's
    assert counting.rows == 2 * n + int(res.queries.sum())
    assert bool((res.queries <= budget).all()) and bool((res.queries >= 1).all())
    assert bool((res.queries[~res.success] == budget).all())  # failures spent the whole budget
    assert bool((res.iterations == res.queries - 1).all())
    # per sample: attack each image alone and count its model calls
    for i in range(4):
        counting.rows = 0
        one = Square(_tm(norm, eps), queries=budget, seed=1).attack(counting, x[i : i + 1], y[i : i + 1])
        assert counting.rows == 2 + int(one.queries[0])


def test_square_misclassified_inputs_cost_no_queries(model, batch):
    x, y = batch
    wrong = (y + 1) % 10
    counting = CountingModel(model)
    res = Square(_tm("linf", 0.3), queries=50).attack(counting, x, wrong)
    assert int(res.queries.sum()) == 0 and counting.rows == 2 * x.shape[0]


def test_square_beats_the_digits_model_at_linf_03(model, digits_test):
    x, y = digits_test.images[:100], digits_test.labels[:100]
    res = Square(_tm("linf", 0.3), queries=300, seed=0).attack(model, x, y)
    correct = res.clean_correct
    assert float(res.success[correct].float().mean()) >= 0.95
    assert float(res.queries[correct & res.success].float().median()) <= 50


def test_square_l2_breaks_most_digits_at_eps_2(model, digits_test):
    x, y = digits_test.images[:100], digits_test.labels[:100]
    res = Square(_tm("l2", 2.0), queries=300, seed=0).attack(model, x, y)
    assert float(res.success[res.clean_correct].float().mean()) >= 0.9
    assert bool((res.distance <= 2.0 + 1e-5).all())


def test_square_succeeds_where_masked_gradients_stop_pgd(model, digits_test):
    masked = Binarized(model)
    x, y = digits_test.images[:48], digits_test.labels[:48]
    tm = _tm("linf", 0.3)
    pgd = PGD(tm, steps=20, seed=0).attack(masked, x, y)
    sq = Square(tm, queries=200, seed=0).attack(masked, x, y)
    correct = sq.clean_correct
    rate_pgd = float(pgd.success[correct].float().mean())
    rate_sq = float(sq.success[correct].float().mean())
    print(rate_sq, rate_pgd)
    assert rate_sq >= 0.8 and rate_sq >= rate_pgd + 0.3, (rate_sq, rate_pgd)


@pytest.mark.parametrize("norm,eps,targeted", [("linf", 0.1, False), ("l2", 0.8, False), ("linf", 0.1, True)])
def test_square_compacted_search_equals_the_plain_loop(model, digits_test, norm, eps, targeted):
    """Square keeps the still-robust images compacted (gathered once, re-gathered only when one
    succeeds); the plain loop below gathers everything from the full batch at every iteration.
    Same generator, same proposals: the iterates, queries and iterations must be identical."""
    from robustlab.attacks.square import margin_loss
    from robustlab.losses import is_adversarial

    x, y = digits_test.images[:40], digits_test.labels[:40]
    target = (y + 3) % 10 if targeted else None
    atk = Square(_tm(norm, eps), queries=60, seed=4)
    res = atk.attack(model, x, y, target=target)
    # the plain loop (the attack's own proposals), on the images the harness attacks
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        todo = ~is_adversarial(model(x), y, target)
    xs, ys, ts = x[todo], y[todo], None if target is None else target[todo]
    n = xs.shape[0]
    propose = atk._propose_linf if norm == "linf" else atk._propose_l2
    with torch.no_grad():
        x_best = atk._init(xs, g)
        scores = model(x_best)
        loss_best, done = margin_loss(scores, ys, ts), is_adversarial(scores, ys, ts)
        queries = torch.ones(n, dtype=torch.long)
        for it in range(atk.queries - 1):
            act = torch.arange(n)[~done]
            if act.numel() == 0:
                break
            t_a = None if ts is None else ts[act]
            cand = propose(xs[act], x_best[act], square_p(it, atk.queries, atk.p_init), g)
            scores = model(cand)
            queries[act] += 1
            loss, hit = margin_loss(scores, ys[act], t_a), is_adversarial(scores, ys[act], t_a)
            accept = (loss < loss_best[act]) | hit
            x_best[act[accept]] = cand[accept]
            loss_best[act[accept]] = loss[accept]
            done[act[accept]] = hit[accept]
    assert torch.equal(res.queries[todo], queries)
    assert torch.equal(res.x_adv[todo], atk._constrain(x_best, xs))  # the harness's final projection


def test_square_does_not_mutate_inputs_or_use_the_global_rng(model, batch):
    x, y = batch
    x0 = x.clone()
    state = torch.get_rng_state()
    Square(_tm("l2", 1.0), queries=20).attack(model, x, y)
    assert torch.equal(x, x0) and torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        ({"queries": 0}, ValueError, "queries"),
        ({"queries": -5}, ValueError, "queries"),
        ({"queries": 10.5}, TypeError, "queries"),
        ({"queries": True}, TypeError, "queries"),
        ({"p_init": 1.5}, ValueError, "p_init"),
        ({"p_init": 0.0}, ValueError, "p_init"),
        ({"output": "labels"}, ValueError, "output"),
    ],
)
def test_square_rejects_bad_budgets(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        Square(_tm("linf", 0.3), **kwargs)


def test_square_rejects_unsupported_norms():
    with pytest.raises(ValueError, match="linf and l2"):
        Square(_tm("l1", 5.0))
    with pytest.raises(TypeError, match="ThreatModel"):
        Square("linf")  # type: ignore[arg-type]


def test_standard_preset_includes_square_for_linf_and_l2_only():
    for norm, eps in (("linf", 0.3), ("l2", 2.0)):
        names = [a.name for a in rl.attacks.standard(_tm(norm, eps)).attacks]
        assert names == ["APGD", "APGDT", "FMN", "Square"]
    assert "Square" not in [a.name for a in rl.attacks.standard(_tm("l1", 8.0)).attacks]
    assert rl.attacks.get("square", _tm("linf", 0.3), queries=10).queries == 10
    assert rl.attacks.STANDARD["standard"][-1][0] == "square"
    for norm, eps in (("linf", 0.3), ("l2", 2.0)):  # the budget and the p-schedule the docs state
        sq = rl.attacks.standard(_tm(norm, eps)).attacks[-1]
        assert (sq.queries, sq.schedule) == (rl.attacks.registry.SQUARE_QUERIES[norm],
                                             rl.attacks.registry.SQUARE_SCHEDULE[norm])
    # the measured choice (docs/benchmarks/blackbox.md): rescaled at linf 1000 queries, absolute at l2 5000
    assert rl.attacks.registry.SQUARE_SCHEDULE == {"linf": "rescaled", "l2": "absolute"}
    assert rl.attacks.get("square", _tm("linf", 0.3)).schedule == "rescaled"  # the paper's code


@pytest.mark.parametrize("norm,eps", [("linf", 0.3), ("l2", 2.0), ("l1", 8.0)])
def test_standard_preset_is_what_its_docstring_states(norm, eps):
    """registry.standard's docstring and describe("standard"), member by member and option by option."""
    apgd, apgdt, fmn, *square = rl.attacks.standard(_tm(norm, eps), seed=3).attacks
    assert (type(apgd).__name__, apgd.steps, apgd.restarts, apgd.loss) == ("APGD", 100, 5, "ce")
    assert (type(apgdt).__name__, apgdt.steps, apgdt.restarts, apgdt.n_target_classes, apgdt.loss) == \
        ("APGDT", 100, 1, 9, "dlr")
    assert apgd.large_eps == apgdt.large_eps == (norm == "l1")  # AutoAttack's l1 use_largereps
    assert (type(fmn).__name__, fmn.steps) == ("FMN", 100)  # in place of FAB-T
    expected = {"linf": [(1000, 0.8, "rescaled")], "l2": [(5000, 0.8, "absolute")], "l1": []}[norm]
    assert [(sq.queries, sq.p_init, sq.schedule) for sq in square] == expected
    assert all(a.seed == 3 for a in rl.attacks.standard(_tm(norm, eps), seed=3).attacks)


def test_standard_reports_the_square_queries(model, digits_test):
    """Square runs only on what the white-box attacks left; its queries reach the ensemble result."""
    masked = Binarized(model)
    x, y = digits_test.images[:16], digits_test.labels[:16]
    preset = rl.attacks.WorstCase(
        [PGD(_tm("linf", 0.3), steps=5), Square(_tm("linf", 0.3), queries=100)], label="mini"
    )
    res = preset.attack(masked, x, y)
    assert res.queries is not None
    broken_by = res.info["broken_by"]
    assert bool((res.queries[broken_by == 0] == 0).all())  # PGD broke them: Square never queried
    assert int(res.queries[broken_by == 1].min()) >= 1


# -- NATTACK, one-pixel, HopSkipJump --------------------------------------------------------------
BLACKBOX = [
    ("nattack-linf", lambda s: NATTACK(_tm("linf", 0.3), queries=30, population=8, seed=s)),
    ("nattack-l2", lambda s: NATTACK(_tm("l2", 2.0), queries=30, population=8, seed=s)),
    ("onepixel-3", lambda s: OnePixel(3, population=8, generations=3, seed=s)),
    ("hsj-l2", lambda s: HopSkipJump("l2", queries=60, init_evals=10, init_trials=10, seed=s)),
    ("hsj-linf", lambda s: HopSkipJump("linf", queries=60, init_evals=10, init_trials=10, seed=s)),
    ("hsj-l2-bounded", lambda s: HopSkipJump(_tm("l2", 1.5), queries=60, init_evals=10, init_trials=10, seed=s)),
]


@pytest.mark.parametrize("case", BLACKBOX, ids=[c[0] for c in BLACKBOX])
def test_blackbox_property_suite(model, batch, case):
    _, make = case
    model.train()
    check_attack(make, model, *batch, batch_sizes=(1, 3))
    model.eval()


@pytest.mark.parametrize("case", BLACKBOX, ids=[c[0] for c in BLACKBOX])
def test_blackbox_query_counts_are_exact(model, batch, case):
    _, make = case
    x, y = batch
    counting = CountingModel(model)
    res = make(3).attack(counting, x, y)
    assert counting.rows == 2 * x.shape[0] + int(res.queries.sum())
    for i in range(3):
        counting.rows = 0
        one = make(3).attack(counting, x[i : i + 1], y[i : i + 1])
        assert counting.rows == 2 + int(one.queries[0])


def test_nattack_respects_the_budget_and_stops_successes(model, batch):
    x, y = batch
    res = NATTACK(_tm("l2", 2.0), queries=200, population=20, seed=0).attack(model, x, y)
    assert bool((res.queries <= 200).all())
    # a failure spends every full iteration it can pay for: (1 + 20) per iteration, plus a last mean query
    assert bool((res.queries[~res.success] >= 200 - 21).all())


def test_nattack_breaks_digits_in_l2(model, digits_test):
    x, y = digits_test.images[:24], digits_test.labels[:24]
    res = NATTACK(_tm("l2", 1.5), queries=600, population=30, seed=0).attack(model, x, y)
    assert float(res.success[res.clean_correct].float().mean()) >= 0.8
    assert bool((res.distance <= 1.5 + 1e-5).all())


def test_onepixel_changes_at_most_k_pixels_and_succeeds_sometimes(model, digits_test):
    x, y = digits_test.images[:24], digits_test.labels[:24]
    for k in (1, 3):
        res = OnePixel(k, population=40, generations=15, seed=0).attack(model, x, y)
        changed = ((res.x_adv - x).abs().sum(dim=1) > 0).flatten(1).sum(dim=1)
        assert bool((changed <= k).all()) and bool((res.distance <= k).all())
        assert float(res.success[res.clean_correct].float().mean()) > 0
        assert bool((res.queries <= 40 * 16).all())


def test_onepixel_results_do_not_depend_on_the_chunk(model, digits_test):
    """The default chunk became 512 rows (cache-sized CPU passes); chunking only groups the forward
    passes: a chunk smaller than the population (one image per pass) gives the same result."""
    x, y = digits_test.images[:12], digits_test.labels[:12]
    runs = [OnePixel(3, population=40, generations=6, chunk=c, seed=2).attack(model, x, y) for c in (8192, 512, 7)]
    for other in runs[1:]:
        assert torch.equal(other.x_adv, runs[0].x_adv) and torch.equal(other.queries, runs[0].queries)
    assert OnePixel(1).chunk == 512


def test_onepixel_apply_pixels_sets_exactly_the_given_pixels():
    x = torch.zeros(1, 3, 4, 5)
    cand = torch.tensor([[[[1.0, 2.0, 0.1, 0.2, 0.3], [3.0, 4.0, 1.0, 1.0, 1.0]]]])  # (1, 1, k=2, 2 + C)
    img = apply_pixels(x, cand)[0, 0]
    assert torch.allclose(img[:, 1, 2], torch.tensor([0.1, 0.2, 0.3]))
    assert torch.allclose(img[:, 3, 4], torch.ones(3))
    assert int((img != 0).any(dim=0).sum()) == 2


def test_hopskipjump_distance_decreases_with_the_budget(model, batch):
    x, y = batch
    x, y = x[:10], y[:10]
    medians = []
    for budget in (150, 600, 2000):
        res = HopSkipJump("l2", queries=budget, seed=0).attack(model, x, y)
        assert bool(res.success.all())  # every boundary point is adversarial
        assert bool((res.queries <= budget).all())
        medians.append(float(res.distance.median()))
    assert medians[0] > medians[1] > medians[2], medians


def test_hopskipjump_bounded_stops_once_within_eps(model, batch):
    x, y = batch
    loose = HopSkipJump(_tm("l2", 3.0), queries=2000, seed=0).attack(model, x, y)
    free = HopSkipJump("l2", queries=2000, seed=0).attack(model, x, y)
    assert int(loose.queries.sum()) < int(free.queries.sum())
    assert bool((loose.distance <= 3.0 + 1e-5).all())


def test_blackbox_bad_budgets_fail_before_any_query(model, batch):
    x, y = batch
    counting = CountingModel(model)
    with pytest.raises(ValueError, match="pixels=65 is more than the 8x8=64 pixels"):
        OnePixel(65).attack(counting, x, y)
    assert counting.rows == 0
    bad = [
        (lambda: OnePixel(0), ValueError, "pixels"),
        (lambda: OnePixel(1, population=3), ValueError, "population"),
        (lambda: OnePixel(1, generations=-1), ValueError, "generations"),
        (lambda: OnePixel(rl.ThreatModel("l2", 1.0)), ValueError, "l0"),
        (lambda: NATTACK(_tm("linf", 0.3), queries=50, population=300), ValueError, "queries=50"),
        (lambda: NATTACK(_tm("linf", 0.3), population=1), ValueError, "population"),
        (lambda: NATTACK(_tm("l1", 3.0)), ValueError, "linf and l2"),
        (lambda: NATTACK(_tm("linf", 0.3), sigma=0.0), ValueError, "sigma"),
        (lambda: HopSkipJump("l2", queries=1), ValueError, "queries"),
        (lambda: HopSkipJump("l1"), ValueError, "l2, linf"),
        (lambda: HopSkipJump("l2", init_evals=0), ValueError, "init_evals"),
        (lambda: HopSkipJump("l2", queries=2.5), TypeError, "queries"),
    ]
    for make, exc, match in bad:
        with pytest.raises(exc, match=match):
            make()


def test_blackbox_attacks_by_name():
    assert isinstance(rl.attacks.get("nattack", _tm("linf", 0.3), queries=500, population=10), NATTACK)
    one = rl.attacks.get("onepixel", rl.ThreatModel("l0", 5))
    assert isinstance(one, OnePixel) and one.pixels == 5
    assert isinstance(rl.attacks.get("hopskipjump", "linf"), HopSkipJump)
    assert rl.attacks.registry.minimal("hopskipjump")


# -- command line ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits_mlp(tmp_path_factory):
    from robustlab.cli import main

    path = tmp_path_factory.mktemp("cli-blackbox") / "digits-mlp"
    assert main(["train", "--dataset", "digits", "--arch", "mlp", "--epochs", "2", "--out", str(path), "--no-progress"]) == 0
    return path


def test_cli_square_with_queries_saves_the_counts(digits_mlp, tmp_path, capsys):
    import json

    from safetensors.torch import load_file

    from robustlab.cli import main

    out = tmp_path / "sq.safetensors"
    assert main(["attack", "--model", str(digits_mlp), "--attack", "square", "--eps", "0.3", "--queries", "50",
                 "--n", "20", "--out", str(out), "--no-progress"]) == 0
    summary = json.loads(out.with_suffix(".json").read_text())
    tensors = load_file(str(out))
    assert summary["config"]["queries"] == 50
    assert int(tensors["queries"].max()) <= 50
    assert summary["queries"]["max"] <= 50 and summary["queries"]["median"] >= 1
    capsys.readouterr()
    assert main(["attack", "--model", str(digits_mlp), "--attack", "pgd", "--eps", "0.3", "--queries", "50",
                 "--out", str(tmp_path / "x.safetensors"), "--no-progress"]) == 2
    assert "--queries applies to the query-based attacks" in capsys.readouterr().err
    assert not (tmp_path / "x.safetensors").exists()
    out2 = tmp_path / "hsj.safetensors"
    assert main(["attack", "--model", str(digits_mlp), "--attack", "hopskipjump", "--queries", "120", "--n", "8",
                 "--out", str(out2), "--no-progress"]) == 0
    assert json.loads(out2.with_suffix(".json").read_text())["norm"] == "l2"
