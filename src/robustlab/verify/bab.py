"""Complete verification of a :class:`~robustlab.verify.spec.Property` by branch and bound.

The method of alpha,beta-CROWN (Wang et al. 2021, arXiv:2103.06624), written for robustlab's
traced networks:

1. **Falsify first.** PGD over the input box on every disjunct of the unsafe region, from the
   centre and random restarts (:mod:`robustlab.verify.falsify`). A point whose output, recomputed
   by a plain forward pass, lies in the unsafe region is a ``sat`` answer.
2. **Root bounds.** CROWN bounds of every ReLU's input over the box, tightened by optimising the
   slopes of the earlier layers per neuron (alpha-CROWN), then the specification rows with
   optimised slopes. A disjunct ``{C_i y <= d_i}`` is infeasible on a domain when one of its rows
   has a lower bound of ``C_i y - d_i`` above ``tau``; the property is ``unsat`` when every disjunct
   is infeasible on every domain.
3. **Branch and bound** on the disjuncts left open: a queue of sub-domains (ReLU splits), the
   batch of domains with the lowest bounds popped at once, one unstable ReLU of each chosen by
   filtered smart branching (:mod:`robustlab.verify.branching`), both children bounded together by
   beta-CROWN (:class:`robustlab.verify.beta.BetaCrown`: slopes and split multipliers optimised by
   projected gradient ascent from the parent's), children whose open disjuncts are all infeasible
   dropped. The minimiser of each child's linear bound is tried as a counterexample, and PGD
   runs from the most promising ones. A domain with every unstable ReLU split is a linear program,
   solved exactly (HiGHS). A network with only a few inputs is split along its input box instead
   (:mod:`robustlab.verify.input_split`).

**Soundness margin.** A bound proves a disjunct infeasible only when it exceeds
``tau = TAU * max(1, max_k |f(centre)_k|)``: the bounds themselves are recomputed in float64 from
the optimised parameters (see :mod:`robustlab.verify.beta`), and ``tau`` keeps a verdict clear of
the rounding of a float32 forward pass (relative 6e-8 per operation, accumulated over the layers),
so that no counterexample evaluated in float32 can contradict an ``unsat``. A counterexample is
reported only after a plain forward pass of the network puts it in the unsafe region (no
tolerance) and it lies in the box.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from robustlab.verify.beta import BetaCrown, outward, relax
from robustlab.verify.bounds import _detached
from robustlab.verify.branching import BRANCHINGS, choose
from robustlab.verify.falsify import first_unsafe, inner_box, pgd
from robustlab.verify.input_split import INPUT_SPLIT_MAX_DIMS, InputSplitStats, search_inputs
from robustlab.verify.network import Network
from robustlab.verify.spec import Property, stack_rows

TAU = 1e-5  # relative verdict margin: a disjunct is infeasible only where its bound exceeds TAU * output scale
STATUSES = ("unsat", "sat", "timeout", "unknown")
SPLITS = ("auto", "relu", "input")  # what branch and bound splits (see verify_property)
_MEMORY_BYTES = 4 << 30  # domains kept in the queue at most (bytes of splits, slopes and multipliers)


@dataclass
class BaBResult:
    """The answer of :func:`verify_property`.

    ``status``: ``unsat`` (verified), ``sat`` (``counterexample`` in the box, ``output`` the
    network's output there, in the unsafe region), ``timeout`` or ``unknown`` (the method could not
    decide: an undecided leaf or sigmoid/tanh relaxations that splitting ReLUs cannot make exact).
    ``domains``: sub-domains bounded; ``stage``: what decided (``attack``, ``root``, ``bab``).
    """

    status: str
    counterexample: Optional[Tensor] = None
    output: Optional[Tensor] = None
    seconds: float = 0.0
    domains: int = 0
    max_depth: int = 0
    domains_per_second: float = 0.0
    stage: str = ""
    info: dict = field(default_factory=dict)


class _Clock:
    """Seconds spent per phase: ``with clock("name"): ...``."""

    def __init__(self) -> None:
        self.totals: dict = {}
        self._name = ""
        self._t = 0.0

    def __call__(self, name: str) -> "_Clock":
        self._name = name
        return self

    def __enter__(self) -> None:
        self._t = time.perf_counter()

    def __exit__(self, *exc) -> None:
        self.totals[self._name] = self.totals.get(self._name, 0.0) + time.perf_counter() - self._t


@dataclass
class _Domains:
    """A batch of N sub-domains: per ReLU layer the decisions ``split`` (N, m) int8 and bounds
    ``lower``, ``upper`` (N, m) float32 of the root's unstable neurons, the slopes ``alpha`` and
    multipliers ``beta`` (S, N, m); the bounds ``lb`` (N, S) of the spec rows and the ``depth`` (N,)."""

    split: list
    lower: list
    upper: list
    alpha: list
    beta: list
    lb: Tensor
    depth: Tensor
    stall: Tensor  # (N,) int8: consecutive generations whose bound did not improve on the parent's

    LISTS = (("split", 0), ("lower", 0), ("upper", 0), ("alpha", 1), ("beta", 1))

    def index(self, idx: Tensor) -> "_Domains":
        """The domains ``idx`` (copies)."""
        out = {name: [t.index_select(dim, idx) for t in getattr(self, name)] for name, dim in self.LISTS}
        return _Domains(lb=self.lb[idx], depth=self.depth[idx], stall=self.stall[idx], **out)

    def relax(self, dtype: torch.dtype) -> list:
        return [relax(lo, hi, sp, dtype) for lo, hi, sp in zip(self.lower, self.upper, self.split)]


class _Queue:
    """Domains waiting to be split, as tensors grown by doubling; popped rows are marked dead
    (key +inf) and the storage is compacted when half of it is dead."""

    def __init__(self, like: _Domains) -> None:
        self.store = like.index(torch.zeros(0, dtype=torch.long))
        self.cap, self.used, self.alive = 0, 0, 0
        self.key = torch.zeros(0, dtype=torch.float64)
        sizes = [t.shape[1] for t in like.split]
        s = like.lb.shape[1]
        self.bytes_per_domain = sum(sizes) * (1 + 4 + 4 + 8 * s) + 8 * s + 17

    def _tensors(self) -> list[tuple[Tensor, int, str, int]]:
        st = self.store
        out = [(t, dim, name, k) for name, dim in _Domains.LISTS for k, t in enumerate(getattr(st, name))]
        return out + [(st.lb, 0, "lb", -1), (st.depth, 0, "depth", -1), (st.stall, 0, "stall", -1)]

    def _set(self, name: str, k: int, t: Tensor) -> None:
        if k < 0:
            setattr(self.store, name, t)
        else:
            getattr(self.store, name)[k] = t

    def _grow(self, need: int) -> None:
        if self.used + need <= self.cap:
            return
        if self.alive < self.used // 2:
            self._compact()
            if self.used + need <= self.cap:
                return
        cap = max(64, 2 * (self.used + need))
        for t, dim, name, k in self._tensors():
            shape = list(t.shape)
            shape[dim] = cap
            out = t.new_zeros(shape)
            out.narrow(dim, 0, self.used).copy_(t.narrow(dim, 0, self.used))
            self._set(name, k, out)
        key = torch.full((cap,), float("inf"), dtype=torch.float64)
        key[: self.used] = self.key[: self.used]
        self.key, self.cap = key, cap

    def _compact(self) -> None:
        keep = torch.isfinite(self.key[: self.used]).nonzero().squeeze(1)
        k = keep.numel()
        for t, dim, _, _ in self._tensors():
            t.narrow(dim, 0, k).copy_(t.index_select(dim, keep))
        self.key[:k] = self.key[keep]
        self.key[k:] = float("inf")
        self.used = k

    def push(self, doms: _Domains, key: Tensor) -> None:
        n = key.numel()
        if n == 0:
            return
        self._grow(n)
        a = self.used
        new = _Queue.__new__(_Queue)
        new.store = doms
        for (t, dim, _, _), (v, _, _, _) in zip(self._tensors(), new._tensors()):
            t.narrow(dim, a, n).copy_(v)
        self.key[a : a + n] = key
        self.used, self.alive = a + n, self.alive + n

    def pop(self, count: int) -> _Domains:
        count = min(count, self.alive)
        idx = self.key[: self.used].topk(count, largest=False).indices
        out = self.store.index(idx)
        self.key[idx] = float("inf")
        self.alive -= count
        return out


def _group_values(lb: Tensor, row_group: Tensor, groups: int) -> Tensor:
    """Per domain and disjunct the best row bound ``max_j lb_j`` (N, G)."""
    out = torch.full((lb.shape[0], groups), float("-inf"), dtype=lb.dtype)
    return out.scatter_reduce(1, row_group.unsqueeze(0).expand_as(lb), lb, "amax")


def verify_property(net: Network, prop: Property, *, timeout: float, seed: int = 0, batch_size: int = 1024,
                    branching: str = "fsb", candidates: int = 5, reduce: str = "min", steps: int = 20,
                    lr_alpha: float = 0.05, lr_beta: float = 0.05, root_steps: int = 50, intermediate_steps: int = 20,
                    refresh_depth: int = 8, stall_steps: int = 60, attack_restarts: int = 64,
                    attack_steps: int = 50, split: str = "auto") -> BaBResult:
    """Decide ``prop`` for ``net`` within ``timeout`` seconds: ``unsat``, ``sat`` (with a
    counterexample), ``timeout`` or ``unknown``.

    Args:
        net: a traced network (:func:`robustlab.verify.network.trace`, or the ONNX loader's).
        prop: the input box and the unsafe output region.
        timeout: wall-clock seconds for everything (attacks, root bounds, branch and bound).
        seed: seed of the attacks' random starts.
        batch_size: domains popped and split per step (2 x batch_size children bounded at once).
        branching: ``"fsb"`` (filtered smart branching) or ``"babsr"``; ``candidates`` per filter,
            ``reduce`` (``"min"`` / ``"max"``) how FSB combines the two children's bounds.
        steps, lr_alpha, lr_beta: Adam steps and step sizes of each batch's beta-CROWN.
        root_steps, intermediate_steps: alpha-CROWN steps at the root (final rows, intermediate bounds).
        refresh_depth: domains up to this depth get their intermediate bounds recomputed after a split.
        stall_steps: a child whose bound is no better than its parent's gets this many more steps,
            with 10 x ``lr_beta`` (0: never).
        attack_restarts, attack_steps: PGD before branch and bound.
        split: what branch and bound splits: ``"relu"`` (unstable ReLUs, beta-CROWN), ``"input"``
            (the input box, :mod:`robustlab.verify.input_split`) or ``"auto"``: the input when the
            network has at most :data:`~robustlab.verify.input_split.INPUT_SPLIT_MAX_DIMS` inputs.

    The disjuncts left open by the root bounds are searched one after the other, those with the
    best root bound first, each by its own branch and bound over the rows of its conjunction (a
    domain is closed when one row's bound exceeds ``tau``); the first counterexample ends the search.
    """
    _check(net, prop, timeout, batch_size, branching, reduce, split)
    run = _Run(net, prop, float(timeout), int(seed), dict(
        batch_size=batch_size, branching=branching, candidates=candidates, reduce=reduce, steps=steps,
        lr_alpha=lr_alpha, lr_beta=lr_beta, refresh_depth=refresh_depth, stall_steps=stall_steps), split)
    with run.clock("attack"):  # a quick attack on every disjunct
        found = run.attack(max(1, attack_restarts // 8), attack_steps, None, 0.1)
    if found is not None:
        return run.result("sat", "attack", found)
    c, d, row_group = stack_rows(prop.groups)
    g = len(prop.groups)
    rows = torch.arange(c.shape[0])
    with run.clock("root"):
        engine = BetaCrown(net, prop.lower, prop.upper, c, d)
        engine.init_bounds()
        run.unstable = engine.num_unstable
        lb, alpha, beta = _root_bound(engine, rows, 0, 0.1)
    gv = _group_values(lb.t(), row_group, g)[0]  # (G,)
    if bool((gv > run.tau).all()):
        return run.result("unsat", "root")
    with run.clock("attack"):  # a strong attack on the disjuncts CROWN leaves open
        found = run.attack(attack_restarts, 2 * attack_steps, (gv <= run.tau).nonzero().squeeze(1).tolist(), 0.25)
    if found is not None:
        return run.result("sat", "attack", found)
    if run.split == "input":
        return run.split_inputs((gv <= run.tau).nonzero().squeeze(1).tolist())
    with run.clock("intermediate"):
        # at most until half the time is spent: the search needs the rest
        engine.tighten_intermediate(intermediate_steps, 0.1, deadline=min(run.deadline, run.t0 + run.timeout / 2))
        run.unstable = engine.num_unstable
    with run.clock("root"):
        lb2, alpha, beta = _root_bound(engine, rows, root_steps, 0.1, run.deadline)
    lb = torch.maximum(lb, lb2)
    gv = _group_values(lb.t(), row_group, g)[0]
    if bool((gv > run.tau).all()):
        return run.result("unsat", "root")
    undecided = False
    for i in gv.argsort(descending=True).tolist():
        if float(gv[i]) > run.tau:
            continue
        if time.perf_counter() > run.deadline:
            return run.result("timeout", "bab")
        sel = (row_group == i).nonzero().squeeze(1)
        engine.c, engine.d = c[sel], d[sel]
        verdict, found = run.search(engine, i, lb[sel], [a[sel] for a in alpha], [b[sel] for b in beta])
        if verdict == "sat":
            return run.result("sat", "bab", found)
        if verdict == "timeout":
            return run.result("timeout", "bab")
        undecided |= verdict == "unknown"
    return run.result("unknown" if undecided else "unsat", "bab")


class _Run:
    """The state of one :func:`verify_property` call: the clock, the attacks and the branch and bound
    of each open disjunct."""

    def __init__(self, net: Network, prop: Property, timeout: float, seed: int, opts: dict, split: str) -> None:
        self.t0 = time.perf_counter()
        self.net, self.prop, self.timeout, self.opts = _detached(net), prop, timeout, opts
        self.deadline = self.t0 + timeout
        self.gen = torch.Generator().manual_seed(seed)
        self.dtype = _net_dtype(net)
        self.clock = _Clock()
        self.domains, self.max_depth, self.unstable, self.leaves = 0, 0, 0, 0
        self.open_bound, self.open_domains, self.rounds, self.stalled = None, 0, 0, 0
        self.lo, self.hi = inner_box(prop, self.dtype)
        # what branch and bound splits: "input" ("auto": when the network has few inputs) or "relu"
        few = prop.lower.numel() <= INPUT_SPLIT_MAX_DIMS
        self.split = "input" if split == "input" or (split == "auto" and few) else "relu"
        with torch.no_grad():
            y_center = self.forward(((self.lo + self.hi) / 2).unsqueeze(0))
        self.tau = TAU * max(1.0, float(y_center.abs().max()))

    def forward(self, x: Tensor) -> Tensor:
        return self.net.forward(x.to(self.dtype))

    def point(self, x: Tensor) -> Tensor:
        """``x`` in the network's dtype, clamped into the box (rounded inwards)."""
        return torch.minimum(torch.maximum(x.to(self.dtype), self.lo), self.hi)

    def result(self, status: str, stage: str, found: Optional[tuple] = None) -> BaBResult:
        seconds = time.perf_counter() - self.t0
        res = BaBResult(status, seconds=seconds, stage=stage, domains=self.domains, max_depth=self.max_depth)
        if found is not None:
            res.counterexample, res.output = _confirmed(self.net, self.prop, found[0])
        res.domains_per_second = self.domains / max(seconds, 1e-9)
        res.info.update({"stage": res.stage, "max_depth": res.max_depth, "tau": self.tau,
                         "seconds_by_phase": dict(self.clock.totals), "unstable": self.unstable, "leaves": self.leaves,
                         "open_bound": self.open_bound, "open_domains": self.open_domains, "rounds": self.rounds,
                         "stalled": self.stalled, "split": self.split})
        return res

    def attack(self, restarts: int, steps: int, groups: Optional[list], share: float,
               starts: Optional[Tensor] = None) -> Optional[tuple]:
        return pgd(self.forward, self.prop, restarts=restarts, steps=steps, generator=self.gen, starts=starts,
                   groups=groups, deadline=min(self.deadline, self.t0 + share * self.timeout), dtype=self.dtype)

    def split_inputs(self, groups: list) -> BaBResult:
        """The disjuncts ``groups`` decided by input splitting (:func:`search_inputs`)."""
        stats = InputSplitStats()
        with self.clock("input split"):
            verdict, found = search_inputs(self.net, self.prop, tau=self.tau, deadline=self.deadline,
                                           forward=self.forward, point=self.point, generator=self.gen, dtype=self.dtype,
                                           groups=groups, batch_size=self.opts["batch_size"], stats=stats)
        self.domains, self.rounds = stats.boxes, stats.rounds
        self.open_bound, self.open_domains = stats.open_bound, stats.open_boxes
        return self.result(verdict, "bab", found)

    def search(self, engine: BetaCrown, group: int, lb: Tensor, alpha: list, beta: list) -> tuple[str, Optional[tuple]]:
        """Branch and bound on disjunct ``group`` (the engine's rows are its conjunction's, S of them)
        from the root's bounds ``lb`` (S, 1) and parameters."""
        o, tau, clock = self.opts, self.tau, self.clock
        s = lb.shape[0]
        rows = torch.arange(s)
        sub = Property(self.prop.lower, self.prop.upper, (self.prop.groups[group],), self.prop.label, self.prop.name)
        bounds = [outward(layer.lower[None], layer.upper[None]) for layer in engine.relus]
        root = _Domains([torch.zeros(1, layer.m, dtype=torch.int8) for layer in engine.relus], [b[0] for b in bounds],
                        [b[1] for b in bounds], alpha, beta, lb.t(), torch.zeros(1, dtype=torch.long),
                        torch.zeros(1, dtype=torch.int8))
        queue = _Queue(root)
        max_domains = max(1024, _MEMORY_BYTES // queue.bytes_per_domain)
        queue.push(root, root.lb.amax(1))
        undecided = False
        rounds = 0
        while queue.alive:
            rounds += 1
            self.rounds += 1
            if time.perf_counter() > self.deadline:
                self.open_bound = float(queue.key[: queue.used].min())
                self.open_domains = queue.alive
                return "timeout", None
            if queue.alive > max_domains:
                return "unknown", None
            doms = queue.pop(o["batch_size"])
            with clock("branching"):
                rx = doms.relax(torch.float32)
                pick = doms.lb.argmax(1)  # the row closest to closing the domain guides the split
                records = _records(engine, pick, rx, doms.alpha, doms.beta)
                layer_idx, neuron, has_free = choose(engine, pick, rx, doms.alpha, doms.beta, records,
                                                     method=o["branching"], candidates=o["candidates"],
                                                     reduce=o["reduce"])
            with clock("leaf"):
                for i in (~has_free).nonzero().squeeze(1).tolist():
                    self.leaves += 1
                    verdict, x = _leaf(engine, sub, doms.index(torch.tensor([i])), tau, self.forward, self.point)
                    if verdict == "sat":
                        return "sat", (x,)
                    undecided |= verdict == "unknown"
            parents = has_free.nonzero().squeeze(1)
            if parents.numel() == 0:
                continue
            with clock("split"):
                kids, first = _children(doms, parents, layer_idx, neuron)
                refresh = (kids.depth <= o["refresh_depth"]).nonzero().squeeze(1)
                empty = torch.zeros(kids.depth.numel(), dtype=torch.bool)
                if refresh.numel():
                    part = kids.index(refresh)
                    lower, upper, gone = engine.refresh(part.lower, part.upper, part.split, first[refresh])
                    for k in range(len(kids.lower)):
                        kids.lower[k][refresh], kids.upper[k][refresh] = lower[k], upper[k]
                    empty[refresh] = gone
                if bool(empty.any()):  # a domain shown empty holds no counterexample
                    keep = (~empty).nonzero().squeeze(1)
                    self.domains += int(empty.sum())
                    kids = kids.index(keep)
                    if keep.numel() == 0:
                        continue
            floor = kids.lb.t()  # (S, 2N): the parent's bounds hold on the child too

            def closed(best: Tensor, idx: Tensor) -> Tensor:
                return torch.maximum(best.double(), floor[:, idx]).amax(0) > 2 * tau

            with clock("bound"):
                new_lb, kids.alpha, kids.beta, _, coeffs = engine.bound(
                    rows, kids.lower, kids.upper, kids.split, kids.alpha, kids.beta, steps=o["steps"],
                    lr_alpha=o["lr_alpha"], lr_beta=o["lr_beta"], done=closed, deadline=self.deadline)
                # A child no better than its parent, twice in a row: the ascent, restarted from the parent's
                # optimum, gets nowhere in a few steps. Typical of split constraints that contradict each other
                # (the bound then tends to +inf along growing multipliers). A longer, bolder ascent.
                flat_now = (new_lb <= floor + 1e-3 * floor.abs() + 1e-6).all(0) & (new_lb.amax(0) <= tau)
                kids.stall = torch.where(flat_now, kids.stall + 1, torch.zeros_like(kids.stall))
                stalled = (kids.stall >= 2).nonzero().squeeze(1)
                if o["stall_steps"] and stalled.numel():
                    self.stalled += stalled.numel()
                    part = kids.index(stalled)
                    part.alpha, part.beta = [a[:, stalled] for a in kids.alpha], [b[:, stalled] for b in kids.beta]
                    lb2, a2, b2, _, co2 = engine.bound(rows, part.lower, part.upper, part.split, part.alpha,
                                                       part.beta, steps=o["stall_steps"], lr_alpha=o["lr_alpha"],
                                                       lr_beta=10 * o["lr_beta"], deadline=self.deadline)
                    better = lb2.amax(0) > new_lb[:, stalled].amax(0)
                    take = stalled[better]
                    new_lb[:, take] = lb2[:, better]
                    coeffs[:, take] = co2[:, better]
                    kids.stall[take] = 0
                    for k in range(len(kids.alpha)):
                        kids.alpha[k][:, take], kids.beta[k][:, take] = a2[k][:, better], b2[k][:, better]
            kids.lb = torch.maximum(floor, new_lb).t()  # (2N, S)
            self.domains += kids.lb.shape[0]
            self.max_depth = max(self.max_depth, int(kids.depth.max()))
            best = kids.lb.amax(1)
            live = (best <= tau).nonzero().squeeze(1)
            if live.numel() == 0:
                continue
            with clock("attack"):
                # The minimiser of each open child's bound (its best row) as a candidate counterexample.
                center, radius = engine.box[torch.float64]
                guide = coeffs[kids.lb[live].argmax(1), live]  # (L, D)
                cand = self.point((center - radius * guide.sign()).reshape(-1, *self.prop.lower.shape))
                found = first_unsafe(self.forward, sub, cand)
                if found is None and (rounds & (rounds - 1) == 0 or rounds % 16 == 0):
                    worst = best[live].topk(min(16, live.numel()), largest=False).indices
                    found = pgd(self.forward, sub, restarts=0, steps=20, generator=self.gen, starts=cand[worst],
                                deadline=self.deadline, dtype=self.dtype)
            if found is not None:
                return "sat", found
            queue.push(kids.index(live), best[live])
        return ("unknown" if undecided else "unsat"), None


def _children(doms: _Domains, parents: Tensor, layer_idx: Tensor, neuron: Tensor) -> tuple[_Domains, Tensor]:
    """Two children per parent, the chosen neuron active (first half) and inactive (second half): its
    decision set, its bounds clamped at 0, its multiplier zeroed; and the split layer of each."""
    p = parents.repeat(2)
    half = parents.numel()
    kids = doms.index(p)
    kids.depth = kids.depth + 1
    sign = torch.cat([torch.ones(half, dtype=torch.int8), -torch.ones(half, dtype=torch.int8)])
    li, nj = layer_idx[p], neuron[p]
    for k in range(len(kids.split)):
        hit = (li == k).nonzero().squeeze(1)
        if hit.numel():
            j = nj[hit]
            kids.split[k][hit, j] = sign[hit]
            kids.beta[k][:, hit, j] = 0.0
            act = sign[hit] > 0
            kids.lower[k][hit, j] = torch.where(act, kids.lower[k][hit, j].clamp(min=0), kids.lower[k][hit, j])
            kids.upper[k][hit, j] = torch.where(act, kids.upper[k][hit, j], kids.upper[k][hit, j].clamp(max=0))
    return kids, li


def _root_bound(engine: BetaCrown, rows: Tensor, steps: int, lr: float,
                deadline: Optional[float] = None) -> tuple[Tensor, list, list]:
    """alpha-CROWN on all rows at the root: bounds (S, 1), slopes and (zero) multipliers."""
    split = [torch.zeros(1, layer.m, dtype=torch.int8) for layer in engine.relus]
    bounds = [outward(layer.lower[None], layer.upper[None]) for layer in engine.relus]
    lower, upper = [b[0] for b in bounds], [b[1] for b in bounds]
    s = rows.numel()
    alpha = [r.init.reshape(1, 1, -1).expand(s, 1, -1).clone() for r in engine.root_relax(torch.float32)]
    beta = [torch.zeros(s, 1, layer.m) for layer in engine.relus]
    lb, alpha, beta, _, _ = engine.bound(rows, lower, upper, split, alpha, beta, steps=steps, lr_alpha=lr, lr_beta=0.0,
                                         deadline=deadline)
    return lb, alpha, beta


def _records(engine: BetaCrown, pick: Tensor, rx: list, alpha: list, beta: list) -> list:
    """Each layer's output coefficients (S=1 per domain, the row ``pick``), shaped (S, N, m) with the
    row at position ``pick`` (the other rows unused), from one float32 backward pass."""
    n = pick.numel()
    dom = torch.arange(n)
    lam = engine.c[pick].float().unsqueeze(0)  # (1, N, K)
    a1 = [a[pick, dom].unsqueeze(0) for a in alpha]
    b1 = [b[pick, dom].unsqueeze(0) for b in beta]
    with torch.no_grad():
        _, records, _ = engine.backward(lam, torch.float32, rx, a1, b1, record=True)
    s = alpha[0].shape[0] if alpha else 1
    out = []
    for r in records:
        if r is None:
            out.append(None)
            continue
        full = r.new_zeros(s, n, r.shape[2])
        full[pick, dom] = r[0]
        out.append(full)
    return out


def _leaf(engine: BetaCrown, prop: Property, dom: _Domains, tau: float, forward,
          point) -> tuple[str, Optional[Tensor]]:
    """A domain with no relaxed ReLU left: the network is affine on it, so each disjunct is a linear
    feasibility problem ``C_i (A x + b) <= d_i`` over the box and the split constraints (HiGHS).
    Infeasible with the rows relaxed by ``tau``: proven; feasible: the solution (or one ``tau``
    inside the region) is checked by a forward pass; otherwise undecided."""
    from scipy.optimize import linprog

    if engine.acts:
        return "unknown", None
    ops = engine.nets[torch.float64].ops
    in_shape = engine.in_shape
    dim = int(np.prod(in_shape))
    x = torch.cat([torch.zeros(1, dim, dtype=torch.float64), torch.eye(dim, dtype=torch.float64)]).reshape(-1, *in_shape)
    a_rows, b_rows = [], []
    by_op = {layer.op: k for k, layer in enumerate(engine.relus)}
    rx = dom.relax(torch.float64)
    with torch.no_grad():
        for i, op in enumerate(ops):
            if i in by_op:
                k = by_op[i]
                layer = engine.relus[k]
                flat = x.reshape(x.shape[0], -1)
                pattern = layer.slope[torch.float64].clone()
                pattern[layer.unstable] = rx[k].a_up[0]  # 1 active, 0 inactive (no neuron is relaxed)
                fixed = dom.split[k][0] != 0
                z = flat[:, layer.unstable[fixed]]  # (D + 1, q): z = A x + b
                sgn = dom.split[k][0][fixed].to(torch.float64)
                # s z >= 0  <=>  -s A x <= s b
                a_rows.append(-(sgn * (z[1:] - z[0])).t())
                b_rows.append(sgn * z[0])
                x = (flat * pattern).reshape(x.shape)
            else:
                x = op.forward(x)
    out = x.reshape(x.shape[0], -1)
    b_out, a_out = out[0], (out[1:] - out[0]).t()  # (K,), (K, D)
    a_ub = torch.cat(a_rows) if a_rows else torch.zeros(0, dim, dtype=torch.float64)
    b_ub = torch.cat(b_rows) if b_rows else torch.zeros(0, dtype=torch.float64)
    bounds = list(zip(prop.lower.double().reshape(-1).tolist(), prop.upper.double().reshape(-1).tolist()))
    undecided = False
    for c, d in prop.groups:
        rows_a = c @ a_out
        rows_b = d - c @ b_out
        for slack in (tau, -tau):
            res = linprog(np.zeros(dim), A_ub=torch.cat([a_ub, rows_a]).numpy(),
                          b_ub=torch.cat([b_ub, rows_b + slack]).numpy(), bounds=bounds, method="highs")
            if res.status == 2 and slack > 0:
                break  # infeasible even with the rows relaxed: this disjunct is proven
            if res.status == 0:
                hit = first_unsafe(forward, prop, point(torch.as_tensor(res.x).reshape(1, *prop.lower.shape)))
                if hit is not None:
                    return "sat", hit[0]
            if slack < 0:
                undecided = True
    return ("unknown" if undecided else "proven"), None


def _confirmed(net: Network, prop: Property, x: Tensor) -> tuple[Tensor, Tensor]:
    """Re-run ``x`` through the network: it must lie in the box with its output in the unsafe region."""
    with torch.no_grad():
        y = net.forward(x.unsqueeze(0).to(_net_dtype(net)))
    if not bool(prop.unsafe(y)[0]) or not bool(prop.contains(x.unsqueeze(0).to(torch.float64))[0]):
        raise RuntimeError("verify_property: a counterexample failed its re-check (please report this)")
    return x.detach().clone(), y[0].detach().clone()


def _net_dtype(net: Network) -> torch.dtype:
    for op in net.ops:
        for v in vars(op).values():
            if isinstance(v, Tensor) and v.is_floating_point():
                return v.dtype
    return torch.float32


def _check(net: Network, prop: Property, timeout: float, batch_size: int, branching: str, reduce: str,
           split: str) -> None:
    if not isinstance(net, Network):
        raise TypeError(f"net must be a robustlab.verify.network.Network (trace(model, x)), got {type(net).__name__}")
    if not isinstance(prop, Property):
        raise TypeError(f"prop must be a robustlab.verify.spec.Property, got {type(prop).__name__}")
    if tuple(prop.lower.shape) != tuple(net.in_shape):
        raise ValueError(f"property {prop.name!r}: input box of shape {tuple(prop.lower.shape)}, the network "
                         f"expects {tuple(net.in_shape)}")
    if prop.num_outputs != net.num_classes:
        raise ValueError(f"property {prop.name!r} constrains {prop.num_outputs} outputs, the network has "
                         f"{net.num_classes}")
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if branching not in BRANCHINGS:
        raise ValueError(f"branching must be one of {', '.join(BRANCHINGS)}, got {branching!r}")
    if reduce not in ("min", "max"):
        raise ValueError(f"reduce must be 'min' or 'max', got {reduce!r}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
