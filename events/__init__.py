"""CloudEvents for every decision and cold start, sent to ``K_SINK``; used by the local stack and
the Knative controller alike, owned by neither."""
