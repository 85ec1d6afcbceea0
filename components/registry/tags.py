"""Names of the tags and artifacts the registry writes (one place, for every module
of `components.registry`)."""

HF_ARTIFACT = "hf_model"
SAMPLE_SCORES = "eval/sample_scores.json"  # artifact of the registration run
TAG_SCORES = "eval.sample_scores"  # version tag: runs:/ URI of SAMPLE_SCORES
TAG_STATUS = "amalia.registration"  # pending at creation, complete before the alias moves
TAG_DECISION = "promotion.decision"  # version tag: JSON record of the last gate decision
TAG_PREVIOUS = "champion.previous"  # version tag: the champion it replaced
TAG_HISTORY = "champion.history"  # registered-model tag: JSON list of champion versions
TAG_LOCK = "promotion.lock"  # registered-model tag: the registry lease (remote stores)
HISTORY_KEEP = 100
LEASE_S = 300.0
LEASE_SETTLE_S = 0.5
