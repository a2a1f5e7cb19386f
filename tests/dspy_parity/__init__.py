# ruff: noqa: E501  (one line per test left out)
"""DSPy's own tests for the names DSPEx shares with DSPy, run against DSPEx.

Each module is a port of one DSPy test module (stanfordnlp/dspy ``tests/...``, named in
its first line): test names and assertions are DSPy's; ``from foundation_dask import
dspex as dspy`` stands for ``import dspy``. Where DSPEx differs on purpose the test is
adjusted and says why in a comment (``docs/dspy-differences.md`` lists the differences).
Async tests run with ``asyncio.run`` (pytest-asyncio is not a test dependency); the tests
of ``Evaluate`` and the optimizers run on a real Dask cluster (``cluster_client``).

Left out, one line each: DSPy test -- why.

tests/primitives/test_example.py
- test_example_repr_str_img -- ``dspy.Image`` (images are not shared).

tests/primitives/test_module.py
- test_load_dspy_program_cross_version -- ``dspy.ReAct`` (tools) and a file saved by DSPy 3.0.1.

tests/primitives/test_base_module.py
- test_save_and_load_with_pkl -- DSPy marks it ``extra``; ``BootstrapFewShot(max_rounds=5)`` is refused by DSPEx (teacher runs are deterministic).
- test_single_module_call_with_usage_tracker -- needs a real LM (``llm_call``) and ``track_usage``.
- test_multi_module_call_with_usage_tracker -- needs a real LM (``llm_call``) and ``track_usage``.
- test_usage_tracker_in_parallel -- an OpenAI key, ``dspy.Parallel`` and ``get_lm_usage``.
- test_usage_tracker_async_parallel -- litellm responses mocked, ``track_usage``, ``JSONAdapter``.
- test_module_history_with_concurrency -- ``dspy.Parallel`` (not shared) and litellm mocks.
- test_forward_direct_call_warning -- DSPEx does not warn when ``forward`` is called directly.

tests/predict/test_predict.py
- test_lm_after_dump_and_load_state -- the state keys of DSPy's litellm ``LM`` (model_type, num_retries, finetuning...).
- test_base_lm_dump_state_ignores_internal_class_marker_kwarg -- DSPy's LM class marker in LM state.
- test_legacy_lm_state_without_class_marker_loads_as_lm -- DSPy's LM class marker in LM state.
- test_custom_lm_load_state_requires_trusted_opt_in -- ``allow_unsafe_lm_state``: DSPEx rebuilds only its own registered LM types.
- test_nested_custom_lm_class_path_loads_for_trusted_state -- same (custom LM classes from saved state).
- test_lm_field_after_dump_and_load_state -- DSPy's litellm ``LM`` state.
- test_load_ignores_serialized_endpoint_override_by_default -- litellm endpoint keys (api_base/base_url) in saved LM state.
- test_load_allows_serialized_endpoint_override_with_opt_in -- same.
- test_load_state_ignores_serialized_endpoint_override_by_default -- same.
- test_load_state_allows_serialized_endpoint_override_with_opt_in -- same.
- test_load_state_ignores_serialized_model_list_endpoint_override_by_default -- litellm ``model_list``.
- test_load_prevents_serialized_endpoint_override_reaching_litellm -- litellm internals.
- test_load_blocks_serialized_model_list_unless_opted_in -- litellm internals.
- test_load_uses_env_api_key_without_honoring_serialized_endpoint_override -- litellm internals.
- test_call_predict_with_chat_history -- DSPy's chat/JSON message layout of ``History`` turns (adapters differ on purpose).
- test_lm_usage -- ``track_usage`` / ``get_lm_usage`` with a mocked litellm.
- test_lm_usage_with_parallel -- same, with ``dspy.Parallel``.
- test_lm_usage_with_async -- same, async.
- test_field_constraints[json] -- ``JSONAdapter`` (not shared); the chat variant is ported.
- test_predicted_outputs_piped_from_predict_to_lm_call -- litellm "predicted outputs".
- test_warning_images -- ``dspy.Image``.

tests/predict/test_chain_of_thought.py
- test_chain_of_thought_with_native_reasoning -- litellm responses mocked (native reasoning).
- test_chain_of_thought_with_manual_reasoning -- litellm responses mocked.

tests/evaluate/test_evaluate.py
- test_evaluate_single_thread_runs_in_main_thread -- DSPEx evaluates on Dask workers, never in the main thread (on purpose).
- test_construct_result_df -- DSPy marks it ``extra``; ``_construct_result_table`` is internal (DSPEx: ``EvaluationResult.frame``).
- test_multi_thread_evaluate_call_cancelled -- sends SIGINT to the test process while a cluster runs the work.
- test_evaluate_display_table -- DSPy marks it ``extra``; ``display_table`` is not shared.
- test_parallel_program_callbacks_are_children_of_evaluate_callback -- module callbacks run on the workers (in copies), the evaluate call on the client.

tests/utils/test_saving.py
- test_save_compiled_model -- DSPy marks it ``extra``; ``BootstrapFewShot(max_rounds=5)`` is refused by DSPEx.

tests/utils/test_settings.py
- test_forbid_configure_call_in_child_thread -- DSPEx lets any thread call ``configure`` (process-wide defaults, on purpose).
- test_dspy_context_with_dspy_parallel -- ``dspy.Parallel`` (not shared) and litellm mocks.
- test_dspy_configure_allowance_async -- DSPEx lets any asyncio task call ``configure`` (on purpose).

tests/callback/test_callback.py
- test_bind_active_call_id_restores_context_after_exception -- a DSPy-internal function used by ``dspy.Parallel``.
- test_tool_calls -- ``dspy.Tool`` (tools are not shared).

tests/callback/test_optimizer_callback.py
- test_bettertogether_nests_child_compile_callback -- ``BetterTogether`` (not shared).
- test_bettertogether_reports_child_failure_but_completes_outer_run -- ``BetterTogether`` (not shared).
"""
