"""Weights shipped with the built-in test beds (``<name>.safetensors``) and their cards (``<name>.card.json``).

Both are produced by ``toolkit/checkpoints/train_testbeds.sh``; see a card for the command, data hash and accuracy.
"""
