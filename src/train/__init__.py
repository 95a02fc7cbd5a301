"""Training: data (corpus -> packed token windows), loop (any model + objective), checkpoint, parallel
(DDP / FSDP2 under torchrun), metrics, run (`archsmith train` for a causal LM), background (runs the
MCP tools start and watch). Importing the package loads nothing heavy; torch loads with the submodules."""
