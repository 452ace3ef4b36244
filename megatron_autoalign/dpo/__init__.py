"""DPO: preference preprocessing, the preference dataset, the loss family, the reference scoring pass and
the DPO task of the shared training loop."""
