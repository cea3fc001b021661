"""Feature dashboards for every latent of a saved SAE: statistics, a static site, exports and a live demo."""
