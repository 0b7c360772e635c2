"""Everything before the model: elements and features, molecule records, readers, QM9, batching."""
