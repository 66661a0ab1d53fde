"""``prtk train-testbed``: train a test-bed CLIP and write its weights and card."""

from __future__ import annotations

from pathlib import Path

import click

from prtk.cli.base import (PrtkCommand, check_json_destination, emit_json, force_option, invocation, json_file,
                           json_option)
from prtk.core.files import check_distinct_outputs, check_writable_folder


@click.command("train-testbed", cls=PrtkCommand)
@click.argument("name", metavar="NAME", type=click.Choice(["prtk-testbed-cifar10", "prtk-testbed-shapes"]))
@click.option("--out", "out_dir", metavar="DIR", required=True,
              help="Folder for NAME.safetensors and NAME.card.json (the shipped ones live in toolkit/checkpoints).")
@click.option("--train-data", metavar="DIR", default=None, help="Training ImageFolder (CIFAR-10 test bed).")
@click.option("--test-data", metavar="DIR", default=None, help="Held-out ImageFolder (CIFAR-10 test bed).")
@click.option("--train-count", type=int, default=None, help="Generated training images (shapes)  [default: 30000]")
@click.option("--test-count", type=int, default=None, help="Generated held-out images (shapes)  [default: 2000]")
@click.option("--epochs", type=int, default=None, help="Passes over the training data  [default: 10]")
@click.option("--batch-size", type=int, default=None,
              help="Images per optimisation step  [default: 256 CIFAR-10, 128 shapes]")
@click.option("--lr", type=float, default=2e-3, show_default=True, help="Peak learning rate (AdamW, cosine).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the initial weights, the shuffle, the augmentation and the caption templates.")
@click.option("--bf16", is_flag=True, help="bfloat16 autocast, for GPUs (slower than fp32 on the CPUs tested).")
@click.option("--device", default="cpu", show_default=True, help="Train on cpu, cuda or cuda:N.")
@click.option("--work-dir", metavar="DIR", default=None,
              help="Per-epoch training state; rerunning the same command resumes from it  [default: OUT/.NAME.work]")
@force_option("Overwrite existing outputs and discard a saved training state.")
@click.option("--model-name", metavar="NAME", default=None,
              help="Name of the trained model and its files  [default: NAME, on the test bed's own data]. Needed "
                   "when the CIFAR-10 test bed is trained on other classes; the architecture is then written "
                   "beside the weights as NAME.json (load with --model-config and --checkpoint).")
@json_option("the card")
def train_testbed_command(name, out_dir, train_data, test_data, train_count, test_count, epochs, batch_size, lr, seed,
                          bf16, device, work_dir, force, model_name, json_path):
    """Train a test-bed CLIP (both towers, contrastive on class captions) and write its weights and card."""
    from prtk.testbeds.clip_training import ClipTrainConfig
    from prtk.core.console import progress_bar, stderr
    from prtk.testbeds.recipes import build_testbed, recipe

    check_json_destination(json_path, force)
    check_writable_folder(out_dir)
    if work_dir is not None:
        check_writable_folder(work_dir)
    model = Path(out_dir) / (model_name or name)
    check_distinct_outputs([("--json", json_file(json_path)), ("--work-dir", work_dir),
                            *((f"the {role}", model.with_name(model.name + suffix)) for role, suffix in
                              (("weights", ".safetensors"), ("card", ".card.json"), ("config", ".json")))])
    plan = recipe(name)
    config = ClipTrainConfig(epochs=plan.epochs if epochs is None else epochs, lr=lr, seed=seed, bf16=bf16,
                             batch_size=plan.batch_size if batch_size is None else batch_size)
    config.check()
    total = config.epochs

    def report_epoch(record: dict) -> None:
        stderr.print(f"epoch {record['epoch']}/{total}: loss {record['loss']:.4f}, "
                     f"held-out top-1 {record['held_out_top1']:.2f}%")

    card = build_testbed(name, out_dir, train_dir=train_data, test_dir=test_data, config=config,
                         train_count=train_count, test_count=test_count, work_dir=work_dir, force=force, device=device,
                         command=invocation(click.get_current_context()), progress=progress_bar, on_epoch=report_epoch,
                         model_name=model_name)
    accuracy = card["accuracy"]
    click.echo(f"{card['model']}: zero-shot top-1 {accuracy['top1']:.2f}% on {accuracy['held_out_images']} "
               f"held-out images (cls-attention@0.6 {accuracy['pruned']['cls-attention@0.6']['top1']:.2f}%, "
               f"random@0.3 {accuracy['pruned']['random@0.3']['top1']:.2f}%), trained in {card['wall_time_s']:.0f} s",
               err=json_path == "-")
    emit_json(card, json_path, force)
