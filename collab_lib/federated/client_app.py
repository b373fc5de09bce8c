"""The ClientApp: runs at one organization, on that organization's data only."""

from __future__ import annotations

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from collab_lib.config import TrainConfig
from collab_lib.federated import task
from collab_lib.training import train as train_loop

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    """One local epoch from the server's weights; reply with weights and the example count."""
    node = task.node_settings(context)
    config = msg.content["config"]
    model = task.load_model(node.base_model, msg.content["arrays"])
    data = task.packed_data(node.data_path, node.base_model, int(config["context"]))
    local = TrainConfig(
        epochs=1,
        batch_size=int(config["batch-size"]),
        grad_accum=int(config["grad-accum"]),
        lr=float(config["lr"]),
        weight_decay=float(config["weight-decay"]),
        warmup_steps=int(config["warmup-steps"]),
        schedule="constant",  # the server sets each round's rate
        grad_clip=float(config["grad-clip"]),
    )
    curves = train_loop(model, data, local, seed=int(config["seed"]))
    content = RecordDict(
        {
            "arrays": task.to_arrays(model),
            "metrics": MetricRecord(
                {"num-examples": len(data), "train-loss": curves.epoch_loss[-1]}
            ),
            "client": ConfigRecord({"organization": node.organization}),
        }
    )
    return Message(content=content, reply_to=msg)
