# %% [markdown]
# # 09 · Query a posterior interactively: REST API, web explorer, notebook view
#
# An amortized posterior answers in milliseconds, so you can move an observation and watch
# the posterior move. `sbi-core serve` puts trained models behind a small REST API with a web
# explorer; from Python or Jupyter the same app runs in a background thread.
#
# From the shell (needs `pip install 'sbi-core[serve]'`):
#
# ```
# sbi-core serve two_moons=model.pt --port 8000        # then open http://127.0.0.1:8000/
# ```
#
# This script does the same from Python, queries the API with httpx and stops the server, so
# it never blocks. Set `SBI_CORE_FAST=1` for a quick run (tiny training budget).

# %%
import os
import tempfile
import warnings
from pathlib import Path

import httpx

from sbi_core import fit, load, save, simulate
from sbi_core.server import BackgroundServer, create_app
from sbi_core.server.notebook import explore
from simulators import get_problem

FAST = os.environ.get("SBI_CORE_FAST") == "1"
NUM_SIMS, MAX_EPOCHS = (600, 3) if FAST else (10_000, 200)

# %% [markdown]
# ## 1. Train and save an NPE posterior on two moons

# %%
problem = get_problem("two_moons")
sims = simulate(problem, NUM_SIMS, seed=0)
with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # the fast run stops before convergence on purpose
    posterior = fit(problem, sims, method="npe", seed=0, max_epochs=MAX_EPOCHS,
                    max_seconds=120, progress=False)
model_file = Path(tempfile.mkdtemp()) / "two_moons.pt"
save(posterior, model_file)
print("saved", model_file)

# %% [markdown]
# ## 2. Serve it on localhost
#
# `create_app({name: posterior})` builds the FastAPI app that `sbi-core serve` runs;
# `BackgroundServer` runs it with uvicorn in a thread, bound to 127.0.0.1 and a free port.

# %%
app = create_app({"two_moons": load(model_file)}, max_samples=50_000)
server = BackgroundServer(app).start()
api = httpx.Client(base_url=server.url, timeout=30)
print("explorer at", server.url + "/", "· API docs at", server.url + "/docs")

# %% [markdown]
# ## 3. Query the REST API
#
# Model info carries the parameter names, prior bounds, the range of the training
# observations (the explorer's slider ranges), a training summary and diagnostics.

# %%
info = api.get("/api/models/two_moons").json()
print(info["param_names"], "prior", info["prior"]["low"], info["prior"]["high"])
print("training x range", info["x_range"]["min"], info["x_range"]["max"])
print("training", {k: info["history"][k] for k in ("epochs", "best_validation_loss", "stopped")})

# %%
x_o = problem.observation(1).tolist()
r = api.post("/api/models/two_moons/sample", json={"x": x_o, "n": 1000, "seed": 0}).json()
print(f"{len(r['samples'])} samples in {1e3 * r['seconds']:.1f} ms; first {r['samples'][0]}")

many = api.post("/api/models/two_moons/sample",
                json={"xs": [x_o, [0.1, -0.2]], "n": 100}).json()
print("samples for 2 observations:", len(many["samples"]), "x", len(many["samples"][0]))

summary = api.post("/api/models/two_moons/summary",
                   json={"x": x_o, "n": 5000, "quantiles": [0.05, 0.5, 0.95]}).json()
print("mean", summary["mean"], "std", summary["std"], "median", summary["quantiles"]["0.5"])

lp = api.post("/api/models/two_moons/log_prob",
              json={"x": x_o, "theta": [summary["mean"], [2.0, 0.0]]}).json()
print("log_prob", lp["log_prob"], "(null: outside the prior support)")

print("MAP", api.post("/api/models/two_moons/map", json={"x": x_o}).json()["map"])

# %% [markdown]
# Bad input gets a 4xx with a message saying what to fix, never a server error:

# %%
bad = api.post("/api/models/two_moons/sample", json={"x": [0.1, "nan"]})
print(bad.status_code, bad.json()["detail"])
bad = api.post("/api/models/two_moons/sample", json={"x": x_o, "n": 10**7})
print(bad.status_code, bad.json()["detail"])

# %%
api.close()
server.stop()

# %% [markdown]
# ## 4. The explorer inside Jupyter
#
# In a notebook, `explore(posterior)` starts the same app in the background and displays the
# explorer (sliders per observation dimension, live pairplot, diagnostics, CSV download) in
# an iframe below the cell. In this script we only print its address and stop it.

# %%
view = explore(posterior, name="two_moons")
print(view)  # in Jupyter, `view` as the last line of a cell shows the explorer
assert httpx.get(view.url).status_code == 200
view.stop()
