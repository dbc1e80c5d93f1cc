"""The product's config file (``thaw up --config``, ``thaw knative render``): its schema
(:mod:`.schema`), loading with every error named (:mod:`.load`), reload on change
(:mod:`.watch`) and the one-line summary ``thaw policy check`` prints (:mod:`.summary`)."""
