"""Off the product path: training the two test-bed CLIPs prtk ships (``prtk train-testbed``). Only the CLI
imports this package; nothing that ranks, trains, exports, validates or benchmarks does."""
