// The console's words in English and Chinese: the browser's language by default, the switch remembered in this tab.

const WORDS = {
  en: {
    skip: 'Skip to content', nav_label: 'Main', switch_language: '中文', sign_out: 'Sign out',
    sign_in_title: 'Sign in to atelier', sign_in_intro: 'Use the API key your operator gave you. It stays in this tab only and is forgotten when you sign out or close it.',
    api_key: 'API key', api_key_hint: 'It starts with atl_.', sign_in: 'Sign in',
    key_refused: 'This key was refused: it is wrong, or it has been revoked. Sign in with a valid key.',
    signed_out: 'You are signed out; the key was forgotten.',
    nav_gallery: 'Gallery', nav_upload: 'Upload', nav_bulk: 'Bulk upload', nav_search: 'Search',
    nav_generate: 'Generate', nav_describe: 'Describe', nav_account: 'Account',
    error_network: 'The service could not be reached. Check the connection and try again.',
    error_quota: 'Your plan has no more of this for now: {message}',
    error_rate: 'Too many requests at once: try again in {seconds} s.',
    error_busy: 'The service is busy: try again in {seconds} s.',
    retry_wait: 'The service is busy: trying again in {seconds} s…',
    upload_done: '{stored} sent, {refused} refused.', copy_what: 'Copy: {what}', state_deleted: 'Deleted',
    error_timeout: 'The service took too long to answer. Try again.',
    random_weights: 'This answer comes from stand-in models with random weights: its words and pictures mean nothing.',
    degraded: 'A model was unavailable, so this answer is partial (degraded).',
    gallery_title: 'Your photos', gallery_empty: 'No photos yet: upload some.', load_more: 'Load more',
    photo: 'Photo', photo_of: 'Photo of {date}', caption: 'Caption', description: 'Description',
    post_text: 'Post text (Chinese)', size: 'Size', date: 'Date', source: 'Source',
    source_upload: 'uploaded', source_generated: 'generated', source_ingest: 'bulk upload',
    delete_photo: 'Delete photo', delete_photo_confirm: 'Delete it for good', photo_deleted: 'The photo was deleted.',
    describe_this: 'Describe', close: 'Close',
    upload_title: 'Upload photos', chosen_files: 'Chosen photos', pick_photos: 'Choose photos',
    drop_hint: 'Or drop them here. Each can have a caption.', caption_for: 'Caption for {name}',
    progress_of: 'Upload of {name}', upload: 'Upload', stored: 'Stored', already_there: 'Already in your gallery',
    refused: 'Refused: {message}',
    bulk_title: 'Bulk upload', pick_bulk: 'Choose photos or a .zip', bulk_hint: 'Many files or one .zip become one job.',
    start_job: 'Start', sending: 'Sending', pick_first: 'Choose a file first.', job_title: 'Job',
    job_progress: 'Job progress', job_counts: '{done} stored, {skipped} duplicates, {failed} failed of {total}',
    failed_files: 'Files that failed', cancel_job: 'Cancel job', jobs_title: 'Your jobs', no_jobs: 'No jobs yet.',
    started: 'Started', state: 'State', counts: 'Counts',
    state_queued: 'Queued', state_running: 'Running', state_succeeded: 'Finished', state_failed: 'Failed',
    state_cancelled: 'Cancelled', state_undone: 'Undone',
    search_title: 'Search', search_label: 'Search your photos', search_hint: 'In Chinese or English.', search: 'Search',
    search_image_label: 'Or find photos like this one', search_image: 'Search by image', results: 'Results',
    no_results: 'Nothing found.', found: '{n} found.', score: 'score {score}',
    generate_title: 'Generate an image', idea_label: 'Your idea', idea_hint: 'A few words in any language: it becomes a detailed English prompt.',
    size_small: 'Small', size_medium: 'Medium', size_large: 'Large',
    seed_label: 'Seed', seed_hint: 'Optional: the same seed and idea give the same picture.',
    keep_label: 'Keep it in my gallery', generate: 'Generate', generating: 'Generating…', result: 'Result',
    prompt_used: 'Prompt:', generated_meta: '{size}, seed {seed}, {seconds} s on the model ({total} s in all)',
    kept: 'Kept in your gallery.', keep_now: 'Keep in gallery', generated: 'The image is ready.',
    describe_title: 'Describe a photo', choose_photo: 'Choose a photo', from_gallery: 'A photo of your gallery',
    or_file: 'Or a file', describe: 'Describe', describing: 'Describing…', copy: 'Copy',
    copied: '{what} copied.', copy_failed: 'Could not copy: select the text and copy it.',
    saved_on_record: 'Saved on the photo\'s record.', described: 'The description is ready.',
    account_title: 'Account', usage_title: 'Usage', plan: 'Plan: {plan}', limit: 'Limit', used: 'Used', quota: 'Quota',
    danger_title: 'Delete all my data', delete_all: 'Delete all my data…',
    delete_all_intro: 'This deletes, for good and at once:', erase_photos: 'every photo and its stored files',
    erase_texts: 'every caption, description and post text', erase_vectors: 'every search index entry of your photos',
    erase_jobs: 'every bulk upload job', delete_all_understood: 'I understand this cannot be undone',
    delete_all_confirm: 'Delete everything', deleted_all: 'All your data was deleted.',
  },
  zh: {
    skip: '跳到内容', nav_label: '主菜单', switch_language: 'English', sign_out: '退出',
    sign_in_title: '登录 atelier', sign_in_intro: '使用运维人员给您的 API 密钥。密钥只保存在本标签页中，退出或关闭后即被忘记。',
    api_key: 'API 密钥', api_key_hint: '以 atl_ 开头。', sign_in: '登录',
    key_refused: '此密钥被拒绝：它有误或已被吊销。请使用有效的密钥登录。',
    signed_out: '您已退出，密钥已被忘记。',
    nav_gallery: '相册', nav_upload: '上传', nav_bulk: '批量上传', nav_search: '搜索',
    nav_generate: '生成', nav_describe: '描述', nav_account: '账户',
    error_network: '无法连接服务。请检查网络后重试。',
    error_quota: '您的套餐暂时没有更多额度：{message}',
    error_rate: '请求过多：请在 {seconds} 秒后重试。',
    error_busy: '服务繁忙：请在 {seconds} 秒后重试。',
    retry_wait: '服务繁忙：{seconds} 秒后自动重试…',
    upload_done: '已发送 {stored} 张，被拒绝 {refused} 张。', copy_what: '复制：{what}', state_deleted: '已删除',
    error_timeout: '服务响应超时，请重试。',
    random_weights: '此结果来自随机权重的替身模型：其文字和图片没有意义。',
    degraded: '有模型暂不可用，此结果不完整（降级）。',
    gallery_title: '您的照片', gallery_empty: '还没有照片：先上传一些吧。', load_more: '加载更多',
    photo: '照片', photo_of: '{date} 的照片', caption: '说明', description: '描述',
    post_text: '帖子文案（中文）', size: '尺寸', date: '日期', source: '来源',
    source_upload: '上传', source_generated: '生成', source_ingest: '批量上传',
    delete_photo: '删除照片', delete_photo_confirm: '永久删除', photo_deleted: '照片已删除。',
    describe_this: '描述', close: '关闭',
    upload_title: '上传照片', chosen_files: '已选照片', pick_photos: '选择照片',
    drop_hint: '或拖放到这里。每张都可以写说明。', caption_for: '{name} 的说明',
    progress_of: '{name} 的上传进度', upload: '上传', stored: '已保存', already_there: '已在您的相册中',
    refused: '被拒绝：{message}',
    bulk_title: '批量上传', pick_bulk: '选择照片或 .zip 文件', bulk_hint: '多个文件或一个 .zip 成为一个任务。',
    start_job: '开始', sending: '发送中', pick_first: '请先选择文件。', job_title: '任务',
    job_progress: '任务进度', job_counts: '共 {total} 个：已保存 {done}，重复 {skipped}，失败 {failed}',
    failed_files: '失败的文件', cancel_job: '取消任务', jobs_title: '您的任务', no_jobs: '还没有任务。',
    started: '开始时间', state: '状态', counts: '计数',
    state_queued: '排队中', state_running: '进行中', state_succeeded: '已完成', state_failed: '失败',
    state_cancelled: '已取消', state_undone: '已撤销',
    search_title: '搜索', search_label: '搜索您的照片', search_hint: '中文或英文均可。', search: '搜索',
    search_image_label: '或查找与此图相似的照片', search_image: '以图搜图', results: '结果',
    no_results: '没有找到。', found: '找到 {n} 张。', score: '得分 {score}',
    generate_title: '生成图片', idea_label: '您的想法', idea_hint: '任何语言的几个词：会变成详细的英文提示词。',
    size_small: '小', size_medium: '中', size_large: '大',
    seed_label: '种子', seed_hint: '可选：相同的种子和想法得到相同的图片。',
    keep_label: '保存到我的相册', generate: '生成', generating: '生成中…', result: '结果',
    prompt_used: '提示词：', generated_meta: '{size}，种子 {seed}，模型用时 {seconds} 秒（共 {total} 秒）',
    kept: '已保存到您的相册。', keep_now: '保存到相册', generated: '图片已生成。',
    describe_title: '描述照片', choose_photo: '选择照片', from_gallery: '相册中的照片',
    or_file: '或一个文件', describe: '描述', describing: '描述中…', copy: '复制',
    copied: '已复制{what}。', copy_failed: '无法复制：请选中文字后手动复制。',
    saved_on_record: '已保存到照片记录中。', described: '描述已完成。',
    account_title: '账户', usage_title: '用量', plan: '套餐：{plan}', limit: '限制', used: '已用', quota: '额度',
    danger_title: '删除我的全部数据', delete_all: '删除我的全部数据…',
    delete_all_intro: '这将立即永久删除：', erase_photos: '所有照片及其存储的文件',
    erase_texts: '所有说明、描述和帖子文案', erase_vectors: '您照片的所有搜索索引条目',
    erase_jobs: '所有批量上传任务', delete_all_understood: '我明白此操作无法撤销',
    delete_all_confirm: '全部删除', deleted_all: '您的全部数据已删除。',
  },
};

const STORE = 'atelier.lang';

export function lang() {
  const chosen = sessionStorage.getItem(STORE);
  if (chosen === 'en' || chosen === 'zh') return chosen;
  return (navigator.language || 'en').toLowerCase().startsWith('zh') ? 'zh' : 'en';
}

export function setLang(value) { sessionStorage.setItem(STORE, value); }

export function t(key, vars = {}) {
  const text = WORDS[lang()][key] ?? WORDS.en[key] ?? key;
  return text.replace(/\{(\w+)\}/g, (_, name) => String(vars[name] ?? ''));
}

export function when(iso) {
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? String(iso) : date.toLocaleString(lang() === 'zh' ? 'zh-CN' : 'en');
}

export const KEYS = Object.keys(WORDS.en);
export const MISSING_ZH = KEYS.filter((k) => !(k in WORDS.zh));
