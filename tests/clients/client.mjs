// Node.js with the npm `openai` package: one call and one stream, through BASE_URL.
import OpenAI from "openai";

const client = new OpenAI({
  baseURL: `${process.env.BASE_URL}/compatible-mode/v1`,
  apiKey: process.env.DASHSCOPE_API_KEY,
  defaultHeaders: { "X-Costsplit-Scenario": "node-app" },
});
const messages = [{ role: "user", content: "Say hello from Node." }];
const completion = await client.chat.completions.create({ model: "qwen-plus", messages });
console.log(JSON.stringify(completion));
const stream = await client.chat.completions.create({ model: "qwen-plus", messages, stream: true });
for await (const chunk of stream) console.log(JSON.stringify(chunk));
