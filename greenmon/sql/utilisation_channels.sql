-- The utilisation gauges the results average: one quantity per channel (NULL: none).
SELECT channel_id, session_id,
       CASE WHEN probe = 'host' AND name = 'cpu.percent' THEN 'cpu_percent'
            WHEN probe = 'host' AND name = 'ram.percent' THEN 'ram_percent'
            WHEN probe = 'nvml' AND name LIKE '%.util_gpu_percent' THEN 'gpu_percent'
            WHEN probe = 'nvml' AND name LIKE '%.util_memory_percent'
                THEN 'gpu_mem_util_percent'
            WHEN probe = 'nvml' AND name LIKE '%.memory_percent' THEN 'gpu_mem_used_percent'
       END AS quantity
FROM channels WHERE probe IN ('host', 'nvml')
