-- wrk script: one non-streaming chat completion per request.
-- KEY and MODEL come from the environment (wrk's Lua has os.getenv).
local key = os.getenv("KEY") or "sk-sluice-demo"
local model = os.getenv("MODEL") or "gpt-4o-mini"
local chunks = os.getenv("CHUNKS") or "16"
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. key
wrk.headers["x-mock-chunks"] = chunks
wrk.body = '{"model":"' .. model .. '","messages":[{"role":"user","content":"Say hello to the edge."}]}'
