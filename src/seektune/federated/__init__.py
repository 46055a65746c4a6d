"""Federated fine-tuning across institutions on Flower (`seektune federate`).

Flower is the engine (simulation on Ray, gRPC transport, FedAvg/FedProx, DP wrappers, SecAgg+);
seektune supplies what runs at each site (the stage's own recipe, so a federated round is an
ordinary run), what travels (the trainable tensors only: params.py), how LoRA is averaged
(aggregate.py), the non-IID shards of a simulation (shards.py) and the federation's run folder
(server.py). app.py launches the two modes.
"""
