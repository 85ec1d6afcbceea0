"""Scale-out of the `validate` stage (`components.validate`): see `shards`."""
