"""Federated training with Flower (paper §2.3): one organization per client.

Laid out as Flower apps are, so the boundary is visible in the tree:

- ``client_app.py`` runs *at an organization*: it reads only that organization's training
  data, trains one local epoch from the weights it receives, and replies with weights and an
  example count (never text or token ids).
- ``server_app.py`` runs *at the server*: Flower's own ``FedAvg`` / ``FedYogi`` aggregate the
  replies (sorted by organization, so arrival order does not matter) and checkpoint every round.
- ``task.py`` is what both sides share: the model's weights as Flower records.
- ``launch.py`` starts the same two apps on Flower's simulation engine (one machine, the
  default), or writes the app directory and the commands for the deployment engine
  (one SuperNode per organization).
"""

import os

# Flower reports usage to its servers unless told not to, and reads this once, at import:
# no default path here makes network calls.
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
