-- The lifecycle (ml/lifecycle.py record_decision) stamps its decision on the model rows it
-- registered: 0015_ml_model_decisions.sql added those columns without granting them, so under
-- the ml role a run published its candidate and then failed to record why (and `due` saw no
-- decision). The ml role may write those four columns and nothing else of a registered model.
grant update (decision, decided_at, decision_reason, evaluation) on ml.models to eiot_ml;
