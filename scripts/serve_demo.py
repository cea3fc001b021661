"""Serve the live demo: type text, see the latents it uses, open their dashboards, steer the model.

Examples::

    python scripts/serve_demo.py      # the shipped pretrained SAE, live page only, http://127.0.0.1:8000/
    python scripts/serve_demo.py --sae_path results/hybrid-tiny-lm --dashboards results/dashboards --port 8000

Binds to 127.0.0.1 unless --host says otherwise. Endpoints: GET /health, POST /api/activations,
POST /api/search, POST /api/steer, the page at /, the dashboards at /dashboards/. It prints its URL once it accepts connections.
"""

from hybrid_sae_ext.dashboards.serve import main

if __name__ == "__main__":
    main()
