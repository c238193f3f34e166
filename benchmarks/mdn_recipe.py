"""Issue 25's plain mixture density network recipe, as a new user would write it, and its variants: the
reference the `hypotheses` latent is measured against (docs/findings.md section P).

y (100 values) -> `--depth` linear layers of `--width` (SiLU; `--body res`: pre-LayerNorm residual blocks)
-> K logits, K x 4 end points (the line head's own map of a sigmoid, `problems.ends_from_unit`) and K x 4
log standard deviations (clamped to [-9, 2]); loss -log sum_c softmax(logits)_c N(ends; mean_c, sd_c^2);
every step a new batch of prior pairs; Adam with cosine decay from `--lr` to `--lrmin`. Every
`--eval_every` steps: raw posterior draws (a component by its weight, then its mean) and coverage draws,
30 per y, on `--n` validation conditions from `--first` (two_birds:validation), one JSON line each.
`--bf16 1`: the trunk under bfloat16 autocast, the heads in float32. `--teach W`: a physics teacher (each
hypothesis' mean LM-refined onto y and regressed toward it where the fit is good and the move small;
it hurt, findings P). `--save FILE`: keep the weights and print where the hypotheses miss.

    python benchmarks/mdn_recipe.py --steps 9000 --eval_every 3000 --bf16 1 --k 64 --save storage/mdn.pt
"""
import argparse, math, time, json, sys
from pathlib import Path
import numpy as np, torch
from torch import nn
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cvae_opt.problems import resolve_problem, ends_from_unit, line_points, line_ends
from cvae_opt.data import draw_pairs, load_pairs, resolve_data_path
from cvae_opt.metrics import enumerate_solutions, evaluate_line_samples, mode_weights

ap = argparse.ArgumentParser()
ap.add_argument("--steps", type=int, default=4000)
ap.add_argument("--batch", type=int, default=1024)
ap.add_argument("--lr", type=float, default=1e-3)
ap.add_argument("--width", type=int, default=512)
ap.add_argument("--depth", type=int, default=4)
ap.add_argument("--k", type=int, default=32)
ap.add_argument("--body", default="mlp")  # mlp | res
ap.add_argument("--act", default="silu")
ap.add_argument("--out", default="sigmoid")  # sigmoid | unit  (unit: clamp)
ap.add_argument("--feat", default="raw")  # raw | raw+diff
ap.add_argument("--eval_every", type=int, default=1000)
ap.add_argument("--first", type=int, default=0)
ap.add_argument("--n", type=int, default=100)
ap.add_argument("--seed", type=int, default=0)
ap.add_argument("--threads", type=int, default=1)
ap.add_argument("--tag", default="")
ap.add_argument("--lrmin", type=float, default=1e-5)
ap.add_argument("--warm", type=int, default=0)
ap.add_argument("--clip", type=float, default=0)
ap.add_argument("--save", default="")
ap.add_argument("--teach", type=float, default=0.0)
ap.add_argument("--teach_n", type=int, default=256)
ap.add_argument("--teach_iters", type=int, default=5)
ap.add_argument("--teach_move", type=float, default=0.05)
ap.add_argument("--teach_fit", type=float, default=0.01)
ap.add_argument("--teach_all", type=int, default=1)
ap.add_argument("--bf16", type=int, default=0)
ap.add_argument("--teach_sig", type=float, default=0)
ap.add_argument("--teach_from", type=int, default=0)
args = ap.parse_args()
torch.set_num_threads(args.threads)
from cvae_opt.machine import machine_line  # noqa: E402
print(machine_line("mdn_recipe") + f", {args.threads} thread(s), {json.dumps(vars(args))}", flush=True)
torch.manual_seed(args.seed)
prob = resolve_problem("two_birds")
box, slopes = prob.box, prob.slopes

class Res(nn.Module):
    def __init__(s, w, act):
        super().__init__(); s.ln = nn.LayerNorm(w); s.l1 = nn.Linear(w, w); s.l2 = nn.Linear(w, w); s.a = act()
    def forward(s, h):
        return h + s.l2(s.a(s.l1(s.a(s.ln(h)))))

ACT = {"silu": nn.SiLU, "gelu": nn.GELU, "relu": nn.ReLU}[args.act]
din = 100 + (98 if args.feat == "raw+diff" else 0)
if args.body == "mlp":
    layers = [nn.Linear(din, args.width), ACT()]
    for _ in range(args.depth - 1):
        layers += [nn.Linear(args.width, args.width), ACT()]
    trunk = nn.Sequential(*layers)
else:
    trunk = nn.Sequential(nn.Linear(din, args.width), *[Res(args.width, ACT) for _ in range(args.depth)], nn.LayerNorm(args.width))
K = args.k
head = nn.Linear(args.width, K * 9)
nn.init.zeros_(head.bias)
with torch.no_grad():
    head.weight[K * 5:].mul_(0.0)
model = nn.Sequential(trunk, head)

def fwd(y):
    f = y.reshape(y.shape[0], -1)
    if args.feat == "raw+diff":
        d = y[:, 1:, :] - y[:, :-1, :]
        f = torch.cat([f, 5 * d.reshape(y.shape[0], -1)], 1)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bool(args.bf16)):
        h = trunk(f)
    o = head(h.float())
    logits = o[:, :K]
    u = o[:, K:5 * K].view(-1, K, 4)
    if args.out == "sigmoid":
        mu = ends_from_unit(torch.sigmoid(u), box, slopes)
    ls = o[:, 5 * K:].view(-1, K, 4).clamp(-9, 2)
    return logits, mu, ls

from cvae_opt.refine import refine
from cvae_opt.problems import sample_misfit
stats = {"frac": 0.0}
def nll(x, y):
    logits, mu, ls = fwd(y)
    e = line_ends(x).unsqueeze(1)
    lp = (-0.5 * ((e - mu) * torch.exp(-ls)) ** 2 - ls - 0.5 * math.log(2 * math.pi)).sum(-1)
    loss = -(torch.logsumexp(torch.log_softmax(logits, -1) + lp, -1)).mean()
    if args.teach > 0 and stats.get("step", 0) >= args.teach_from:
        n = args.teach_n
        m0 = mu[:n].detach()
        xs = line_points(m0, 50)
        xr = refine(prob, xs, y[:n], args.teach_iters, continuation=0.0)
        t = line_ends(xr).float()
        fit = sample_misfit(prob, xr, y[:n]) <= args.teach_fit
        moved = (t - m0).abs().amax(-1) <= args.teach_move
        if args.teach_sig > 0:
            moved &= ((t - m0).abs() <= args.teach_sig * torch.exp(ls[:n].detach())).all(-1)
        mask = (fit & moved).float()
        if not args.teach_all:
            mask = mask * (torch.softmax(logits[:n].detach(), -1) >= 0.01).float()
        stats["frac"] = float(mask.mean())
        sq = (0.5 * ((mu[:n] - t) * torch.exp(-ls[:n].detach())) ** 2).sum(-1)
        loss = loss + args.teach * (mask * sq).sum() / n
    return loss

val = load_pairs(resolve_data_path("two_birds:validation"))
yv = val.y[args.first:args.first + args.n]
sols = enumerate_solutions(prob, yv)
wts = mode_weights(prob, sols)

@torch.no_grad()
def evaluate(draw="posterior", S=30):
    model.eval()
    logits, mu, ls = fwd(yv)
    w = torch.softmax(logits, -1)
    g = torch.Generator().manual_seed(123)
    if draw == "posterior":
        c = torch.multinomial(w, S, replacement=True, generator=g)
    else:
        order = torch.argsort(w, 1, descending=True)
        cnt = (w >= min(0.01, 1 / K)).sum(1, keepdim=True)
        j = torch.arange(S).unsqueeze(0)
        picks = torch.multinomial(torch.where(w >= min(0.01, 1 / K), w, torch.zeros_like(w)), S, replacement=True, generator=g)
        c = torch.where(j < cnt, order.gather(1, j.clamp(max=K - 1).expand(len(w), S)), picks)
    e = mu.gather(1, c.unsqueeze(-1).expand(-1, -1, 4))
    xs = line_points(e.double(), 50)
    model.train()
    m = evaluate_line_samples(prob, xs, yv, sols, weights=wts)
    return {k: round(m[k], 4) for k in ("mode_precision", "mode_recall", "valid_fraction", "misfit_rmse")}

opt = torch.optim.Adam(model.parameters(), lr=args.lr)
def lr_at(s):
    if s < args.warm:
        return args.lr * (s + 1) / args.warm
    return args.lrmin + 0.5 * (args.lr - args.lrmin) * (1 + math.cos(math.pi * s / args.steps))
gen = torch.Generator().manual_seed(args.seed + 1)
t0 = time.time()
for s in range(args.steps):
    for gp in opt.param_groups:
        gp["lr"] = lr_at(s)
    p = draw_pairs(prob, args.batch, gen)
    stats["step"] = s
    loss = nll(p.x, p.y)
    opt.zero_grad(); loss.backward()
    if args.clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
    opt.step()
    if (s + 1) % args.eval_every == 0 or s + 1 == args.steps:
        el = time.time() - t0
        mp = evaluate("posterior"); mc = evaluate("coverage")
        print(json.dumps({"tag": args.tag, "step": s + 1, "sec": round(el), "loss": round(float(loss), 3), "tfrac": round(stats["frac"], 3), "post": mp, "cov": {k: mc[k] for k in ("mode_precision", "mode_recall")}}), flush=True)
if args.save:
    torch.save(model.state_dict(), args.save)

@torch.no_grad()
def diagnose():
    model.eval()
    logits, mu, ls = fwd(yv)
    w = torch.softmax(logits, -1).numpy(); mu = mu.numpy(); sd = torch.exp(ls).numpy()
    dmin, wsum_model, wsum_exact, sdnear = [], [], [], []
    spurious = []
    for g in range(len(yv)):
        e = line_ends(torch.from_numpy(sols[g])).numpy()  # (n,4)
        if len(e) == 0:
            continue
        d = np.abs(mu[g][:, None, :] - e[None]).max(-1)  # (K, n)
        elig = w[g] >= 0.01
        dm = np.where(elig[:, None], d, 9).min(0)
        dmin += list(dm)
        near = d.argmin(1)  # each hypothesis' nearest solution
        dn = d.min(1)
        mw = np.zeros(len(e))
        for k in range(K):
            if dn[k] <= 0.02:
                mw[near[k]] += w[g][k]
        spurious.append(w[g][dn > 0.02].sum())
        wsum_model += list(mw); wsum_exact += list(wts[g])
        for j in range(len(e)):
            k = d[:, j].argmin(); sdnear.append(sd[g][k].max())
    dmin = np.array(dmin)
    print("solutions:", len(dmin))
    for t in (0.0005, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2):
        print(f"  share of solutions with an eligible hypothesis within {t}: {np.mean(dmin <= t):.3f}")
    print("  mass on hypotheses > 0.02 from every solution (mean over y):", np.mean(spurious))
    wm, we = np.array(wsum_model), np.array(wsum_exact)
    print("  exact weight of solutions hit vs missed:", we[dmin <= 0.02].mean(), we[dmin > 0.02].mean())
    print("  model mass / exact weight, quartiles over hit solutions:", np.percentile(wm[dmin <= .02] / we[dmin <= .02], [10, 25, 50, 75, 90]))
    print("  nearest hypothesis' max std quartiles:", np.percentile(sdnear, [10, 25, 50, 75, 90]))

if args.save:
    diagnose()
