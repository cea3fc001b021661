"""Same-process A/B of the kernel changes: old kernels (blocked gathered dot, sort-built CSR) vs new."""
import sys, os, statistics, time, torch
sys.path.insert(0, os.path.join(os.getcwd(), "benchmarks"))
import bench_train_step as b
from hybrid_sae_ext.kernels import primitives as P
new_csr = P._csr_by_latent
def old_csr(values, indices, n_out):
    k = indices.shape[1]; flat = indices.reshape(-1)
    order = flat.to(torch.int32).sort(stable=True).indices
    crow = torch.bincount(flat, minlength=n_out).cumsum(0)
    return torch.cat([crow.new_zeros(1), crow]), order // k, values.reshape(-1)[order]
def use(kind):
    P._csr_by_latent = old_csr if kind == "old" else new_csr
    P.NATIVE_TOKEN_ORDER_TABLE_BYTES = 0 if kind == "old" else 24 * 2**20
labels = sys.argv[1].split(","); n = int(sys.argv[2])
cfg = b.BenchConfig()
pool = b.make_data(cfg, cfg.batch * 4, part=0); batches = pool.split(cfg.batch); dead = b.dead_mask(cfg, 0.0)
runs = [(kind, l) for l in labels for kind in ("old", "new")]
cs = {r: b.make_contender(r[1], cfg) for r in runs}
for r, c in cs.items():
    use(r[0])
    for i in range(3): c.step(batches[i % 4], dead)
t = {r: [] for r in runs}
for i in range(n):
    for r, c in cs.items():
        use(r[0]); t0 = time.perf_counter(); c.step(batches[i % 4], dead); t[r].append(1e3 * (time.perf_counter() - t0))
base = statistics.median(t[("old", labels[0])])
for r in runs:
    m = statistics.median(t[r]); q = statistics.quantiles(t[r], n=4)
    print(f"{r[0]:4s} {r[1]:22s} {m:7.2f} ms (q1 {q[0]:.2f} q3 {q[2]:.2f})  speed vs old {labels[0]}: {base/m:.3f}")
