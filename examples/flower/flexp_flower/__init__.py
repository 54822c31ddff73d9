"""A Flower app in which Flower deploys and flexp computes: split federated fine-tuning."""
