# TEMPORARY (the HuBERT helper's): the method contract for hubert and hubert_iter2 only; removed before commit.
import tests.test_method_contract as c
from keras_ssl.models import registry

c.shard_methods = lambda shard, shards=2: [registry.get("hubert"), registry.get("hubert_iter2")]
from tests.test_method_contract import (contract_runs, method_run, pytest_generate_tests,  # noqa: F401,E402
                                        test_config_round_trips, test_evaluate_runs_the_declared_evaluations,
                                        test_export_serves_every_declared_endpoint,
                                        test_option_defaults_are_the_model_constructor_defaults,
                                        test_predict_refuses_a_wrong_batch_in_one_line_and_keeps_working,
                                        test_trains_resumes_and_saves)

SHARD = 0
