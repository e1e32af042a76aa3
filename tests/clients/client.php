<?php
// PHP with the curl extension: a compatible call and a native stream, through BASE_URL.
$base = getenv("BASE_URL");
$headers = [
    "Authorization: Bearer " . getenv("DASHSCOPE_API_KEY"),
    "Content-Type: application/json",
    "X-Costsplit-Scenario: php-app",
];
$ch = curl_init("$base/compatible-mode/v1/chat/completions");
curl_setopt_array($ch, [
    CURLOPT_POST => true,
    CURLOPT_HTTPHEADER => $headers,
    CURLOPT_RETURNTRANSFER => true,
    CURLOPT_POSTFIELDS => json_encode([
        "model" => "qwen-plus",
        "messages" => [["role" => "user", "content" => "Say hello from PHP."]],
    ]),
]);
echo curl_exec($ch), "\n";
curl_close($ch);
$ch = curl_init("$base/api/v1/services/aigc/text-generation/generation");
curl_setopt_array($ch, [
    CURLOPT_POST => true,
    CURLOPT_HTTPHEADER => array_merge($headers, ["X-DashScope-SSE: enable"]),
    CURLOPT_POSTFIELDS => json_encode([
        "model" => "qwen-plus",
        "input" => ["messages" => [["role" => "user", "content" => "Say hello from PHP."]]],
        "parameters" => ["result_format" => "message", "incremental_output" => true],
    ]),
    CURLOPT_WRITEFUNCTION => function ($ch, $data) { echo $data; return strlen($data); },
]);
curl_exec($ch);
curl_close($ch);
