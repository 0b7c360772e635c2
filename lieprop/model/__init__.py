"""The model: Lie groups, the LieConv layer, the network, invariant inference and model bundles."""
