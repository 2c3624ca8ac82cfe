"""The method contract's second shard: the per-method tests of test_method_contract.py,
for the methods `shard_methods(1)` deals to this module (its docstring says what they check)."""

from tests.test_method_contract import (contract_runs, method_run, pytest_generate_tests,  # noqa: F401
                                        test_config_round_trips, test_evaluate_runs_the_declared_evaluations,
                                        test_export_serves_every_declared_endpoint,
                                        test_option_defaults_are_the_model_constructor_defaults,
                                        test_predict_refuses_a_wrong_batch_in_one_line_and_keeps_working,
                                        test_trains_resumes_and_saves)

SHARD = 1
