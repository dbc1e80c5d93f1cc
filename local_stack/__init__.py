"""The local runtime behind ``thaw up``: the composition root (:mod:`.stack`) and the actuator
that runs engine replicas as child processes (:mod:`.actuator`)."""
