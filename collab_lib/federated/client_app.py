"""The ClientApp: runs at one organization, on that organization's data only."""

from __future__ import annotations

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from collab_lib.federated import task
from collab_lib.training import train as train_loop

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    """One local epoch from the server's weights; reply with weights and the example count.

    The learning rate continues the client's own schedule across rounds (warm-up in round 1
    only, then the decay), with a fresh optimizer each round: clients keep no state.
    """
    node = task.node_settings(context)
    config = msg.content["config"]
    local = task.train_config(config, epochs=1)
    model = task.load_model(node.base_model, msg.content["arrays"])
    data = task.packed_data(node.data_path, node.base_model, int(config["context"]))
    dp, seed = task.dp_settings(config), int(config["seed"])  # seeded: repeatable, not secret
    if dp is not None:  # DP-SGD: each organization draws its own samples and noise
        seed = task.organization_seed(seed, node.organization)
    rnd, rounds = int(config["round"]), int(config["num-rounds"])
    span = task.client_schedule(rnd, rounds, len(data), local, dp)
    curves = train_loop(model, data, local, seed=seed, schedule_span=span, dp=dp)
    content = RecordDict(
        {
            "arrays": task.to_arrays(model),
            "metrics": MetricRecord(
                {
                    "num-examples": len(data),
                    "unit-weight": 1,  # organization-level DP averages the updates unweighted
                    "train-loss": curves.epoch_loss[-1],
                    "lr-first": curves.step_lr[0],
                    "lr-last": curves.step_lr[-1],
                }
            ),
            "client": ConfigRecord({"organization": node.organization}),
        }
    )
    return Message(content=content, reply_to=msg)
