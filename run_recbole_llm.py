"""Train and test a recbole-llm or RecBole model.

    python run_recbole_llm.py --model=VQRec --profile=cpu [--dataset=ml-100k] [--config_files="a.yaml b.yaml"] [--key=value ...]
"""
from recbole_llm.cli import main

if __name__ == "__main__":
    main()
