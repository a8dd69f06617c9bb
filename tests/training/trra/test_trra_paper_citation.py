"""TrRaTrainer names the paper the way TRL trainers do (`_paper`, read by TRL's model-card generation)."""

from flexrealign.training.trra.trainer import TrRaTrainer


def test_trra_trainer_paper_names_arxiv_2506_12704():
    paper = TrRaTrainer._paper
    assert paper["id"] == "2506.12704"
    assert paper["title"] == "Flexible Realignment of Language Models"
    assert "arXiv:2506.12704" in paper["citation"]
    assert paper["citation"].startswith("@article{")
