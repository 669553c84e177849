-- wrk script: one streamed chat completion per request (the whole stream
-- is read; wrk's latency is the time to the end of the stream).
local key = os.getenv("KEY") or "sk-sluice-demo"
local model = os.getenv("MODEL") or "gpt-4o-mini"
local chunks = os.getenv("CHUNKS") or "64"
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. key
wrk.headers["x-mock-chunks"] = chunks
wrk.body = '{"model":"' .. model .. '","stream":true,"messages":[{"role":"user","content":"Say hello to the edge."}]}'
