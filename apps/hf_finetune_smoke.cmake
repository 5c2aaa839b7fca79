# ctest script of app.finetune_hf_<family>: federated_finetune --model on a tiny Hugging Face
# checkpoint of tests/data/hf_tiny (with its hand-made character tokenizer.json) and the files of
# tests/data/hf_tiny/app; checks the CSV, the PEFT directory's keys on the real module names (and
# for chats that the messages column was read, loss on the responses), a second run that starts
# from that PEFT directory, and the refusal of --model with --checkpoint.
#   cmake -D EXE=... -D MODEL=<dir> -D TRAIN=<file> -D TEST=<file> -D KEY=<a PEFT key>
#         -D WORK=<dir> -D "ARGS=..." -P hf_finetune_smoke.cmake
cmake_minimum_required(VERSION 3.21)  # the binary header below is read under current policies
file(REMOVE_RECURSE "${WORK}")
set(ENV{XDG_CACHE_HOME} "${WORK}/cache")  # --base-precision auto caches its probe there
separate_arguments(_args UNIX_COMMAND "${ARGS}")
set(_common --model "${MODEL}" --train "${TRAIN}" --test "${TEST}" --clients 3 --local-steps 2
            --batch 4 --threads 2 ${_args})
execute_process(COMMAND "${EXE}" ${_common} --rounds 2 --methods fedit,rolora --out "${WORK}/first"
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
message("${out}${err}")
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "federated_finetune --model failed with ${rc}")
endif()
foreach(f fedit.csv rolora.csv rolora_adapter/adapter_config.json
          rolora_adapter/adapter_model.safetensors)
  if(NOT EXISTS "${WORK}/first/${f}")
    message(FATAL_ERROR "federated_finetune --model did not write ${f}")
  endif()
endforeach()
# The header after its 8-byte length (which holds NUL bytes, where a CMake string would end).
file(READ "${WORK}/first/rolora_adapter/adapter_model.safetensors" _weights OFFSET 8 LIMIT 16384)
string(FIND "${_weights}" "${KEY}" _at)
if(_at EQUAL -1)
  message(FATAL_ERROR "the PEFT weights have no key ${KEY}")
endif()
file(READ "${WORK}/first/rolora_adapter/adapter_config.json" _config)
if(NOT _config MATCHES "\"base_model_name_or_path\": \"${MODEL}\"")
  message(FATAL_ERROR "adapter_config.json does not name the model directory:\n${_config}")
endif()
if(TRAIN MATCHES "chat_" AND NOT out MATCHES "\\(messages; loss on the responses\\)")
  message(FATAL_ERROR "the chats were not read as a messages column with the loss on the responses")
endif()
if(NOT out MATCHES "rolora +round +2/2 +phase A .*agg err [0-9.]+e-(0[6-9]|[1-9][0-9])")
  message(FATAL_ERROR "RoLoRA's A round did not report an exact aggregation")
endif()

if(NOT EXISTS "${WORK}/cache/rolora/base_precision.json" OR
   NOT out MATCHES "base precision: (fp32|bf16) \\(bf16 GEMM [0-9]+ GFLOP/s")
  message(FATAL_ERROR "--base-precision auto (the default with --model) did not probe and cache")
endif()

# The adapters written above as the starting point of another federation, on a bf16 base.
execute_process(COMMAND "${EXE}" ${_common} --methods rolora --rounds 1 --out "${WORK}/second"
                        --init-adapter "${WORK}/first/rolora_adapter" --base-precision bf16
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
message("${out}${err}")
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "federated_finetune --init-adapter failed with ${rc}")
endif()

execute_process(COMMAND "${EXE}" ${_common} --checkpoint "${WORK}/model.safetensors"
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(rc EQUAL 0 OR NOT err MATCHES "--model and --checkpoint name two base models")
  message(FATAL_ERROR "--model with --checkpoint was not refused (${rc}): ${out}${err}")
endif()
