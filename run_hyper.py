"""Hyperparameter search for a recbole-llm or RecBole model (RecBole's HyperTuning).

    python run_hyper.py --model=SASRec --dataset=ml-100k --params_file=properties/hyper/SASRec.hyper --profile=cpu
"""
from recbole_llm.tuning import main

if __name__ == "__main__":
    main()
