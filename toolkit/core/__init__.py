"""Stage 0, what every stage stands on: the one-line input error, safe file writing (temporary name + rename,
pairs moved together, resumable run folders), tagged safetensors files, devices, console output."""
